# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The node-firewall data model shared by the nftables and iptables roles.

One model (which ports a Kubernetes node of a given role must accept, from which sources) is
expanded into backend-neutral rules, then rendered either as an nftables table (text for
nft_ruleset) or as iptables chains (rule specs for iptables_ruleset). Pure functions: no I/O.
"""

from __future__ import annotations

import ipaddress
import typing as t

NFT_TABLE = "kubenode_firewall"
IPT_CHAIN = "KUBENODE-FIREWALL"

# name: (protocol, ports, node roles, default source group)
# Sources: "any" (everyone), "cluster" (the cluster_cidrs, or everyone while none are given),
# "admin" (the ssh_sources, or everyone while none are given).
# Ports: kubeadm's "Ports and Protocols" page and Calico's network requirements.
CATALOGUE: t.Dict[str, t.Tuple[str, str, t.Tuple[str, ...], str]] = {
    "ssh": ("tcp", "22", ("control_plane", "worker"), "admin"),
    "kube_apiserver": ("tcp", "6443", ("control_plane",), "any"),
    "etcd": ("tcp", "2379-2380", ("control_plane",), "cluster"),
    "kubelet": ("tcp", "10250", ("control_plane", "worker"), "cluster"),
    "kube_proxy_healthz": ("tcp", "10256", ("control_plane", "worker"), "any"),
    "kube_controller_manager": ("tcp", "10257", ("control_plane",), "cluster"),
    "kube_scheduler": ("tcp", "10259", ("control_plane",), "cluster"),
    "nodeports_tcp": ("tcp", "30000-32767", ("control_plane", "worker"), "any"),
    "nodeports_udp": ("udp", "30000-32767", ("control_plane", "worker"), "any"),
    "calico_bgp": ("tcp", "179", ("control_plane", "worker"), "cluster"),
    "calico_vxlan": ("udp", "4789", ("control_plane", "worker"), "cluster"),
    "calico_typha": ("tcp", "5473", ("control_plane", "worker"), "cluster"),
    "calico_wireguard": ("udp", "51820-51821", ("control_plane", "worker"), "cluster"),
}
CNI_SERVICES = {
    "calico": ("calico_bgp", "calico_vxlan", "calico_typha", "calico_wireguard"),
    "none": (),
}
NODE_ROLES = ("worker", "control_plane")
PROTOCOLS = ("tcp", "udp", "sctp")

# JSON Schema of the model (the roles' variables without their prefix).
SCHEMA: t.Dict[str, t.Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "kubenode.dataplane node firewall",
    "type": "object",
    "additionalProperties": False,
    "required": ["node_role"],
    "properties": {
        "node_role": {"enum": list(NODE_ROLES)},
        "cni": {"enum": sorted(CNI_SERVICES)},
        "cluster_cidrs": {"type": "array", "items": {"type": "string", "format": "cidr"}},
        "ssh_sources": {"type": "array", "items": {"type": "string", "format": "cidr"}},
        "disabled_services": {"type": "array", "items": {"enum": sorted(CATALOGUE)}},
        "trusted_interfaces": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9_.:@*-]{1,15}$"}},
        "allow_icmp": {"type": "boolean"},
        "default_action": {"enum": ["drop", "reject", "accept"]},
        "log_dropped": {"type": "boolean"},
        "extra_rules": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "protocol", "ports"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                    "protocol": {"enum": list(PROTOCOLS)},
                    "ports": {"type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$"},
                    "sources": {"type": "array", "items": {"type": "string", "format": "cidr"}},
                },
            },
        },
    },
}

DEFAULTS: t.Dict[str, t.Any] = {
    "cni": "calico",
    "cluster_cidrs": [],
    "ssh_sources": [],
    "disabled_services": [],
    "trusted_interfaces": [],
    "allow_icmp": True,
    "default_action": "drop",
    "log_dropped": False,
    "extra_rules": [],
}


class ModelError(ValueError):
    """Invalid model; the message names the field by its JSON path."""


def _path(parts: t.Iterable[t.Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _check_cidr(value: str, where: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ModelError(f"{where}: '{value}' is not an IP address or network") from None


def value_problems(model: t.Mapping[str, t.Any], prefix: str = "$") -> t.List[str]:
    """Checks a JSON Schema cannot express: addresses and port ranges. Paths start at ``prefix``."""
    problems: t.List[str] = []

    def cidr(value: t.Any, parts: t.List[t.Any]) -> None:
        try:
            _check_cidr(str(value), prefix + _path(parts)[1:])
        except ModelError as exc:
            problems.append(str(exc))

    for key in ("cluster_cidrs", "ssh_sources"):
        values = model.get(key)
        for i, value in enumerate(values if isinstance(values, list) else []):
            cidr(value, [key, i])
    extras = model.get("extra_rules")
    for i, rule in enumerate(extras if isinstance(extras, list) else []):
        if not isinstance(rule, dict):
            continue
        for j, value in enumerate(rule.get("sources") or []):
            cidr(value, ["extra_rules", i, "sources", j])
        ports = str(rule.get("ports", ""))
        nums = [int(p) for p in ports.split("-") if p.isdigit()]
        if nums and (max(nums) > 65535 or min(nums) < 1 or nums != sorted(nums)):
            problems.append(f"{prefix}{_path(['extra_rules', i, 'ports'])[1:]}: '{ports}' is not a port "
                            "or an ascending range within 1-65535")
    return problems


def validate(model: t.Mapping[str, t.Any]) -> None:
    """Raise ModelError listing every problem at once, each with its JSON path."""
    problems: t.List[str] = []
    try:
        import jsonschema  # controller side: jsonschema is a dependency of the collection
    except ImportError:  # pragma: no cover - the roles run this on the controller
        jsonschema = None
    if jsonschema is not None:
        validator = jsonschema.Draft202012Validator(SCHEMA)
        for err in sorted(validator.iter_errors(dict(model)), key=lambda e: [str(p) for p in e.absolute_path]):
            problems.append(f"{_path(err.absolute_path)}: {err.message}")
    problems += value_problems(model)
    if problems:
        raise ModelError("invalid node firewall: " + "; ".join(problems) + "; nothing was changed")


def expand(model: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    """Backend-neutral rules: [{name, protocol, ports, v4: [cidr], v6: [cidr], any: bool}]."""
    validate(model)
    m = dict(DEFAULTS)
    m.update({k: v for k, v in model.items() if v is not None})
    groups = {"any": [], "cluster": list(m["cluster_cidrs"]), "admin": list(m["ssh_sources"])}
    wanted = [n for n, (_p, _ports, roles, _s) in CATALOGUE.items()
              if m["node_role"] in roles and not n.startswith("calico_")]
    wanted += list(CNI_SERVICES[m["cni"]])
    rules = []
    for name in wanted:
        if name in m["disabled_services"]:
            continue
        proto, ports, _roles, group = CATALOGUE[name]
        rules.append(_rule(name, proto, ports, groups[group]))
    for extra in m["extra_rules"]:
        rules.append(_rule(extra["name"], extra["protocol"], str(extra["ports"]), list(extra.get("sources") or [])))
    return rules


def _rule(name: str, proto: str, ports: str, sources: t.List[str]) -> t.Dict[str, t.Any]:
    nets = [ipaddress.ip_network(s, strict=False) for s in sources]
    return {
        "name": name,
        "protocol": proto,
        "ports": ports,
        "any": not nets,
        "v4": [str(n) for n in nets if n.version == 4],
        "v6": [str(n) for n in nets if n.version == 6],
    }


def _settings(model: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    m = dict(DEFAULTS)
    m.update({k: v for k, v in model.items() if v is not None})
    return m


def render_nft(model: t.Mapping[str, t.Any]) -> str:
    """The whole owned table `inet kubenode_firewall`, as nft text."""
    rules = expand(model)
    m = _settings(model)
    policy = "accept" if m["default_action"] == "accept" else "drop"
    lines = [
        f"table inet {NFT_TABLE} {{",
        "\tchain input {",
        f"\t\ttype filter hook input priority filter; policy {policy};",
        "\t\tct state established,related accept",
        "\t\tct state invalid drop",
        '\t\tiif "lo" accept',
    ]
    for ifname in m["trusted_interfaces"]:
        lines.append(f'\t\tiifname "{ifname}" accept')
    if m["allow_icmp"]:
        lines.append("\t\tmeta l4proto { icmp, ipv6-icmp } accept")
    for r in rules:
        dport = r["ports"]
        match = f"{r['protocol']} dport {dport}"
        comment = f'comment "{r["name"]}"'
        if r["any"]:
            lines.append(f"\t\t{match} accept {comment}")
            continue
        if r["v4"]:
            lines.append(f"\t\tip saddr {{ {', '.join(r['v4'])} }} {match} accept {comment}")
        if r["v6"]:
            lines.append(f"\t\tip6 saddr {{ {', '.join(r['v6'])} }} {match} accept {comment}")
    if m["log_dropped"] and m["default_action"] != "accept":
        lines.append('\t\tlimit rate 5/second log prefix "kubenode-fw drop: "')
    if m["default_action"] == "reject":
        lines.append("\t\treject")
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def render_iptables(model: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    """One owned chain per IP version in the filter table, jumped to first from INPUT."""
    rules = expand(model)
    m = _settings(model)
    chains = []
    for version, icmp, key in (("ipv4", "icmp", "v4"), ("ipv6", "ipv6-icmp", "v6")):
        specs = [
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-m conntrack --ctstate INVALID -j DROP",
            "-i lo -j ACCEPT",
        ]
        specs += [f"-i {ifname.replace('*', '+')} -j ACCEPT" for ifname in m["trusted_interfaces"]]
        if m["allow_icmp"]:
            specs.append(f"-p {icmp} -j ACCEPT")
        for r in rules:
            dport = r["ports"].replace("-", ":")
            tail = f"-p {r['protocol']} -m {r['protocol']} --dport {dport} -m comment --comment {r['name']} -j ACCEPT"
            if r["any"]:
                specs.append(tail)
            else:
                specs += [f"-s {net} {tail}" for net in r[key]]
        if m["log_dropped"] and m["default_action"] != "accept":
            specs.append('-m limit --limit 5/sec -j LOG --log-prefix "kubenode-fw drop: "')
        if m["default_action"] == "drop":
            specs.append("-j DROP")
        elif m["default_action"] == "reject":
            specs.append("-j REJECT")
        chains.append({
            "ip_version": version,
            "table": "filter",
            "chain": IPT_CHAIN,
            "rules": specs,
            "jump_from": "INPUT",
            "jump_position": 1,
        })
    return chains
