# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The node's dataplane spec: one document, its JSON Schema and its defaults.

The schema is published at docs/schemas/node.schema.json (a test keeps the two identical) so YAML
editors can complete and check a spec; the node role validates it on the controller before any
task touches a node, listing every error with its JSON path.
"""

from __future__ import annotations

import copy
import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils import _fwmodel

IPVS_MODULES = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh"]
BASE_MODULES = ["nf_conntrack", "br_netfilter", "overlay"]
BASE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
}

_FIREWALL_PROPS = copy.deepcopy(_fwmodel.SCHEMA["properties"])
_FIREWALL_PROPS["backend"] = {
    "enum": ["nftables", "iptables", "none"],
    "description": "Which role applies the node firewall; none leaves the node's firewall alone.",
}

SCHEMA: t.Dict[str, t.Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/kubenode/dataplane/blob/main/docs/schemas/node.schema.json",
    "title": "kubenode.dataplane node dataplane spec",
    "description": "The input of the kubenode.dataplane.node role (variable node_spec).",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "kernel_modules": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "extra": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                          "description": "Modules loaded besides the ones the dataplane needs."},
                "persistent": {"type": "boolean", "description": "Load them at boot too."},
            },
        },
        "sysctls": {
            "type": "object",
            "description": "Kernel parameters set besides (or instead of) the defaults for Kubernetes.",
            "propertyNames": {"pattern": "^[a-z0-9_./-]+$"},
            "additionalProperties": {"type": ["string", "integer", "boolean"]},
        },
        "iptables_backend": {"enum": ["nft", "legacy", "auto"],
                             "description": "The one iptables backend the node uses."},
        "firewall": {
            "type": "object",
            "additionalProperties": False,
            "properties": _FIREWALL_PROPS,
        },
        "kube_proxy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mode": {"enum": ["iptables", "ipvs", "nftables"]},
                "target": {"enum": ["file", "cluster", "none"],
                           "description": "file: the node's own kube-proxy config file; cluster: the kubeadm "
                                          "ConfigMap, from the first control-plane host; none: prerequisites only."},
                "config_path": {"type": "string"},
                "kubeconfig": {"type": "string"},
                "ipvs": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "scheduler": {"type": "string"},
                        "strict_arp": {"type": "boolean"},
                    },
                },
            },
        },
    },
}

DEFAULTS: t.Dict[str, t.Any] = {
    "kernel_modules": {"extra": [], "persistent": True},
    "sysctls": {},
    "iptables_backend": "nft",
    "firewall": {"backend": "nftables", "node_role": "worker"},
    "kube_proxy": {
        "mode": "iptables",
        "target": "file",
        "config_path": "/var/lib/kube-proxy/config.conf",
        "kubeconfig": "/etc/kubernetes/admin.conf",
        "ipvs": {"scheduler": "rr", "strict_arp": False},
    },
}


class SpecError(ValueError):
    pass


def _path(parts: t.Iterable[t.Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _merge(base: t.Any, over: t.Any) -> t.Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return copy.deepcopy(over)


def validate(spec: t.Any) -> None:
    import jsonschema  # controller side

    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems = [
        f"{_path(e.absolute_path)}: {e.message}"
        for e in sorted(validator.iter_errors(spec), key=lambda e: [str(p) for p in e.absolute_path])
    ]
    if isinstance(spec, dict) and isinstance(spec.get("firewall"), dict):
        problems += _fwmodel.value_problems(spec["firewall"], prefix="$.firewall")
    if problems:
        raise SpecError(f"invalid node spec ({len(problems)} problem{'s' if len(problems) > 1 else ''}): "
                        + "; ".join(problems) + "; no node was touched")


def effective(spec: t.Optional[t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
    """Validate and fill defaults; derive the module set and sysctls the dataplane needs."""
    spec = dict(spec or {})
    validate(spec)
    eff = _merge(DEFAULTS, spec)
    ipvs = eff["kube_proxy"]["mode"] == "ipvs"
    modules = BASE_MODULES + (IPVS_MODULES if ipvs else [])
    eff["kernel_modules"]["names"] = list(dict.fromkeys(modules + list(eff["kernel_modules"]["extra"])))
    # the IPVS sysctls (net.ipv4.vs.*) are the ipvs role's, in its own file: one owner per key
    sysctls = dict(BASE_SYSCTLS)
    sysctls.update({k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in eff["sysctls"].items()})
    eff["sysctls"] = sysctls
    fw = dict(eff["firewall"])
    backend = fw.pop("backend", "nftables")
    eff["firewall"] = {"backend": backend, "model": {**copy.deepcopy(_fwmodel.DEFAULTS), **fw}}
    return eff


def verify(info: t.Mapping[str, t.Any], eff: t.Mapping[str, t.Any]) -> t.List[str]:
    """What differs between a node's dataplane_info report and its effective spec, one sentence each."""
    problems: t.List[str] = []
    states = (info.get("modules") or {}).get("state") or {}
    for name in eff["kernel_modules"]["names"]:
        state = states.get(name, "not reported")
        if state not in ("loaded", "builtin"):
            problems.append(f"kernel module {name} is {state}")
    live = info.get("sysctls") or {}
    for key, value in eff["sysctls"].items():
        got = live.get(key)
        if got is None or " ".join(str(got).split()) != value:
            problems.append(f"sysctl {key} is {got!r}, not {value!r}")
    ipt = info.get("iptables") or {}
    if ipt.get("mixed"):
        problems.append("both iptables backends hold rules")
    wanted_backend = eff["iptables_backend"]
    if wanted_backend != "auto" and ipt.get("default_backend") not in (None, wanted_backend):
        problems.append(f"the iptables command uses the {ipt.get('default_backend')} backend, not {wanted_backend}")
    if eff["firewall"]["backend"] == "nftables":
        tables = (info.get("nftables") or {}).get("tables") or []
        if not any(tb.get("family") == "inet" and tb.get("name") == _fwmodel.NFT_TABLE for tb in tables):
            problems.append(f"the nftables table inet {_fwmodel.NFT_TABLE} is missing")
    kp = eff["kube_proxy"]
    report = info.get("kube_proxy") or {}
    if kp["target"] == "file" and report.get("configured_mode") != kp["mode"]:
        problems.append(f"kube-proxy's config file sets mode {report.get('configured_mode')!r}, not {kp['mode']!r}")
    if kp["target"] == "cluster" and report.get("running") and report.get("mode") != kp["mode"]:
        problems.append(f"kube-proxy runs in {report.get('mode')!r} mode, not {kp['mode']!r}")
    return problems
