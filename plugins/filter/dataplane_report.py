# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: dataplane_report
short_description: Turn a dataplane_info result into a report a person can read, warnings first
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - Renders the result of M(kubenode.dataplane.dataplane_info) as a list of lines, one topic a line.
  - The warnings with their remedies come first, then kube-proxy's mode and how it was found, iptables, nftables,
    IPVS, the CNI, MetalLB, the kernel, modules, sysctls, Kubernetes and the parts that could not be read.
  - The C(kubenode.dataplane.doctor) playbook prints it for each node.
options:
  _input:
    description: The registered result of M(kubenode.dataplane.dataplane_info).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Read the dataplane
  kubenode.dataplane.dataplane_info:
  register: dataplane

- name: Print it
  ansible.builtin.debug:
    msg: "{{ dataplane | kubenode.dataplane.dataplane_report }}"
"""

RETURN = r"""
_value:
  description: The report, one line per item; the first line says how many warnings there are.
  type: list
  elements: str
"""

import typing as t

from ansible.errors import AnsibleFilterError

WIDTH = 12
SHOWN_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack", "br_netfilter", "overlay", "nf_tables")


def _line(topic: str, text: str) -> str:
    return f"{topic:<{WIDTH}} {text}"


def _kube_proxy(kp: t.Mapping[str, t.Any]) -> str:
    endpoint = kp.get("endpoint") or {}
    if kp.get("mode_source") == "endpoint":
        text = f"mode {kp['mode']} (answered by {endpoint.get('url')})"
    elif kp.get("mode"):
        text = f"mode {kp['mode']} (inferred from {'; '.join(kp.get('evidence') or [])})"
    else:
        text = "not seen: none of its rules in the kernel"
    if kp.get("mode_source") != "endpoint" and endpoint.get("url"):
        text += f"; {endpoint['url']} {'answered: ' + endpoint['error'] if endpoint.get('reachable') else 'not reachable'}"
    if kp.get("configured_mode"):
        text += f"; configured mode {kp['configured_mode']}"
    if kp.get("strict_arp") is not None:
        text += f"; strictARP {'on' if kp['strict_arp'] else 'off'} (from {kp.get('strict_arp_source')})"
    return text


def _iptables(ipt: t.Mapping[str, t.Any]) -> str:
    backends = ipt.get("backends") or {}
    if not any(b.get("available") for b in backends.values()):
        return "not readable (no iptables-save program)"
    backend = ipt.get("backend") or "none in use"
    text = f"backend {backend}"
    if ipt.get("default_backend"):
        text += f" (the iptables command uses {ipt['default_backend']}, v{ipt.get('version')})"
    parts = []
    for name in ("nft", "legacy"):
        data = backends.get(name) or {}
        if not data.get("available"):
            parts.append(f"{name} not installed")
            continue
        part = f"{name} {data['rules']} rules in {data['chains']} chains"
        detail = [f"{data[k]} {label}" for k, label in (("kube_chains", "KUBE-"), ("calico_chains", "cali-")) if data.get(k)]
        if detail:
            part += f" ({', '.join(detail)})"
        parts.append(part)
    text += "; " + ", ".join(parts)
    if ipt.get("kubernetes_backend"):
        text += f"; kubelet's hint chains in {ipt['kubernetes_backend']}"
    return text


def _nftables(nft: t.Mapping[str, t.Any]) -> str:
    if not nft.get("available"):
        return "not readable"
    tables = nft.get("tables") or []
    if not tables:
        return "no tables"
    owners: t.Dict[str, t.List[str]] = {}
    for table in tables:
        owners.setdefault(table["owner"], []).append(f"{table['family']} {table['name']}")
    listed = "; ".join(f"{owner}: {', '.join(names)}" for owner, names in owners.items())
    return f"{len(tables)} tables ({listed})"


def _ipvs(ipvs: t.Mapping[str, t.Any], kernel_ip_vs: t.Optional[str]) -> str:
    kube = ipvs.get("kube_ipvs0") or {}
    iface = f"kube-ipvs0 with {kube.get('addresses', 0)} addresses" if kube.get("present") else "no kube-ipvs0"
    if not ipvs.get("available"):
        why = "this kernel has no IP_VS" if kernel_ip_vs == "missing" else "ip_vs not loaded"
        return f"not active ({why}); {iface}"
    return f"{ipvs['services']} virtual services ({ipvs['services_on_kube_ipvs0']} on kube-ipvs0); {iface}"


def _cni(cni: t.Mapping[str, t.Any]) -> str:
    if not cni.get("name"):
        return "none seen"
    text = cni["name"]
    if cni.get("calico_dataplane"):
        text += f" ({cni['calico_dataplane']} dataplane)"
    if cni.get("evidence"):
        text += ": " + ", ".join(cni["evidence"])
    return text


def _kernel(kernel: t.Mapping[str, t.Any]) -> str:
    features = kernel.get("features") or {}
    config = kernel.get("config") or {}
    source = kernel.get("config_source") or "no config readable"
    modules = {"y": "yes", "n": "no"}.get(config.get("CONFIG_MODULES") or "", "unknown")
    return (f"{kernel.get('release')} ({source}): loadable modules {modules}, IP_VS {features.get('ip_vs')}, "
            f"nf_tables {features.get('nf_tables')}, nftables mode capable {'yes' if kernel.get('nftables_proxy_capable') else 'no (< 5.13)'}")


def _sysctls(sysctls: t.Mapping[str, t.Optional[str]]) -> str:
    shown = [(k, v) for k, v in sysctls.items() if not k.startswith("net.ipv4.vs.")]
    vs = {k: v for k, v in sysctls.items() if k.startswith("net.ipv4.vs.")}
    text = ", ".join(f"{k}={'absent' if v is None else v}" for k, v in shown)
    if vs and all(v is None for v in vs.values()):
        text += ", net.ipv4.vs.* absent"
    else:
        wanted = ("conntrack", "conn_reuse_mode", "expire_nodest_conn", "expire_quiescent_template")
        text += ", " + ", ".join(f"net.ipv4.vs.{k}={vs.get('net.ipv4.vs.' + k) or 'absent'}" for k in wanted)
    return text


def dataplane_report(info: t.Mapping[str, t.Any]) -> t.List[str]:
    if not isinstance(info, dict) or "findings" not in info or "kube_proxy" not in info:
        raise AnsibleFilterError("dataplane_report takes the registered result of kubenode.dataplane.dataplane_info")
    findings = info["findings"]
    lines = [f"WARNINGS: {len(findings)}" if findings else "WARNINGS: none"]
    for finding in findings:
        lines.append(f"  [{finding['id']}] {finding['message']}")
        lines.append(f"      remedy: {finding['remedy']}")
    lines.append(_line("kube-proxy", _kube_proxy(info["kube_proxy"])))
    lines.append(_line("iptables", _iptables(info["iptables"])))
    lines.append(_line("nftables", _nftables(info["nftables"])))
    lines.append(_line("IPVS", _ipvs(info["ipvs"], (info["kernel"].get("features") or {}).get("ip_vs"))))
    lines.append(_line("CNI", _cni(info["cni"])))
    metallb = info.get("metallb") or {}
    lines.append(_line("MetalLB", ", ".join(metallb["evidence"]) if metallb.get("present") else "not seen"))
    lines.append(_line("kernel", _kernel(info["kernel"])))
    state = (info.get("modules") or {}).get("state") or {}
    at_boot = set((info.get("modules") or {}).get("at_boot") or [])
    lines.append(_line("modules", ", ".join(f"{m} {state[m]}{' (at boot)' if m in at_boot else ''}"
                                            for m in SHOWN_MODULES if m in state)))
    lines.append(_line("sysctls", _sysctls(info.get("sysctls") or {})))
    kube = info.get("kubernetes") or {}
    if kube.get("version"):
        lines.append(_line("Kubernetes", f"kubelet {kube['version']}"))
    else:
        lines.append(_line("Kubernetes", f"kubelet at {kube['kubelet']}, version unknown" if kube.get("kubelet") else "no kubelet installed"))
    for part in info.get("unavailable") or []:
        lines.append(_line("unavailable", f"{part['part']}: {part['reason']}"))
    return lines


class FilterModule:
    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"dataplane_report": dataplane_report}
