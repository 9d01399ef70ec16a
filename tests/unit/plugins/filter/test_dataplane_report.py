"""The doctor's text: dataplane_report on reports gathered from captured scenarios, and dataplane_summary."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.kubenode.dataplane.plugins.filter.dataplane_report import dataplane_report
from ansible_collections.kubenode.dataplane.plugins.filter.dataplane_summary import dataplane_summary
from tests.unit import dataplane_info_fixtures as fx


def report(scenario, tmp_path, **kw):
    gatherer, _runner = fx.gatherer(scenario, tmp_path, **kw)
    return {"changed": False, **gatherer.gather()}


def topics(lines):
    return [line.split(None, 1)[0] for line in lines if not line.startswith(" ")]


def test_mixed_node_starts_with_its_warning_and_remedy(tmp_path):
    lines = dataplane_report(report("mixed", tmp_path))
    assert lines[0] == "WARNINGS: 1"
    assert lines[1] == ("  [mixed_iptables_backends] both iptables backends hold rules (legacy 9 rules, nft 64 rules); "
                        "rules in one are invisible to tools using the other")
    assert lines[2].startswith("      remedy: keep nft (kubenode.dataplane.iptables_backend)")
    assert topics(lines)[1:] == ["kube-proxy", "iptables", "nftables", "IPVS", "CNI", "MetalLB", "kernel", "modules",
                                 "sysctls", "Kubernetes"]
    text = "\n".join(lines)
    assert "kube-proxy   mode iptables (inferred from KUBE-SERVICES chain in the nat table (nft backend))" in text
    assert "backend mixed (the iptables command uses nft, v1.8.9); nft 64 rules in 41 chains (29 KUBE-, 12 cali-), legacy 9 rules in 4 chains" in text
    assert "IPVS         not active (this kernel has no IP_VS); no kube-ipvs0" in text
    assert "CNI          calico (iptables dataplane): 1 cali* workload interfaces" in text


def test_healthy_ipvs_node_says_none_and_names_its_evidence(tmp_path):
    lines = dataplane_report(report("vm-ipvs", tmp_path))
    assert lines[0] == "WARNINGS: none"
    text = "\n".join(lines)
    assert "mode ipvs (inferred from kube-ipvs0 with 2 addresses and 4 IPVS virtual services)" in text
    assert "strictARP off (from sysctl)" in text
    assert "IPVS         4 virtual services (2 on kube-ipvs0); kube-ipvs0 with 2 addresses" in text
    assert "ip_vs loaded, ip_vs_rr loaded" in text
    assert "kernel       6.1.0-56-amd64 (/boot/config-6.1.0-56-amd64): loadable modules yes, IP_VS module" in text
    assert "net.ipv4.vs.conntrack=0" in text


def test_absent_sysctls_read_absent_not_zero(tmp_path):
    text = "\n".join(dataplane_report(report("vm-plain", tmp_path)))
    assert "net.bridge.bridge-nf-call-iptables=absent" in text
    assert "net.ipv4.vs.* absent" in text
    assert "net.ipv4.ip_forward=0" in text


def test_endpoint_answer_and_unavailable_parts_are_shown(tmp_path):
    lines = dataplane_report(report("kube-iptables-calico", tmp_path, fetch=lambda url, timeout: "nftables"))
    assert lines[:2] == ["WARNINGS: none", "kube-proxy   mode nftables (answered by http://127.0.0.1:10249/proxyMode)"]
    gatherer, _runner = fx.gatherer("bare", tmp_path / "none", tools=dict.fromkeys(fx.CapturedModule("bare").tools))
    lines = dataplane_report({"changed": False, **gatherer.gather()})
    assert "iptables     not readable (no iptables-save program)" in lines
    assert "unavailable  nftables: the program 'nft' is not installed" in lines


def test_report_refuses_what_is_not_a_dataplane_info_result():
    with pytest.raises(AnsibleFilterError, match="registered result of kubenode.dataplane.dataplane_info"):
        dataplane_report({"changed": False, "msg": "something else"})


def test_summary_lists_warned_nodes_first_then_clean_then_missing(tmp_path):
    mixed = report("mixed", tmp_path / "a")
    clean = report("kube-iptables-calico", tmp_path / "b")
    lines = dataplane_summary([clean, None, mixed], ["w1", "w2", "w3"])
    assert lines == [
        "3 nodes: 1 with warnings, 1 without, 1 without a report",
        "WARN w3: mixed_iptables_backends",
        "ok   w1",
        "none w2: no report (unreachable or failed)",
    ]
    with pytest.raises(AnsibleFilterError):
        dataplane_summary([clean], ["w1", "w2"])
