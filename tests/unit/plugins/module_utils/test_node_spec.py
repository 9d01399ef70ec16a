"""The node spec: typos and bad values are caught on the controller, all at once, with paths."""

from __future__ import annotations

import pytest

from ansible_collections.kubenode.dataplane.plugins.module_utils._node_spec import SpecError, effective


def test_empty_spec_gives_the_documented_defaults():
    eff = effective({})
    assert eff["kernel_modules"]["names"] == ["nf_conntrack", "br_netfilter", "overlay"]
    assert eff["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert eff["firewall"]["backend"] == "nftables"
    assert eff["firewall"]["model"]["node_role"] == "worker" and eff["firewall"]["model"]["default_action"] == "drop"
    assert eff["kube_proxy"]["mode"] == "iptables"


def test_ipvs_mode_derives_the_ipvs_modules_and_sysctl():
    eff = effective({"kube_proxy": {"mode": "ipvs"}, "kernel_modules": {"extra": ["ip_vs", "dummy"]},
                     "sysctls": {"net.ipv4.ip_forward": True, "vm.max_map_count": 262144}})
    assert eff["kernel_modules"]["names"] == [
        "nf_conntrack", "br_netfilter", "overlay", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "dummy"]
    assert "net.ipv4.vs.conntrack" not in eff["sysctls"]  # the ipvs role's
    assert eff["sysctls"]["vm.max_map_count"] == "262144"
    assert eff["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert eff["kube_proxy"]["target"] == "file"


def test_a_typo_in_a_field_name_is_named_with_its_path():
    with pytest.raises(SpecError) as err:
        effective({"kube_proxy": {"mdoe": "ipvs"}})
    assert "$.kube_proxy: Additional properties are not allowed ('mdoe' was unexpected)" in str(err.value)
    assert str(err.value).endswith("no node was touched")


def test_every_problem_is_listed_at_once():
    with pytest.raises(SpecError) as err:
        effective({
            "firewal": {},
            "kube_proxy": {"mode": "userspace"},
            "firewall": {"backend": "pf", "cluster_cidrs": ["10.0.0.0/40"]},
        })
    msg = str(err.value)
    assert msg.startswith("invalid node spec (4 problems)")
    assert "'firewal' was unexpected" in msg
    assert "$.kube_proxy.mode: 'userspace' is not one of" in msg
    assert "$.firewall.backend: 'pf' is not one of" in msg
    assert "$.firewall.cluster_cidrs[0]: '10.0.0.0/40' is not an IP address or network" in msg
