"""The node-firewall model: expansion per node role and CNI, and validation with JSON paths."""

from __future__ import annotations

import pytest

from ansible_collections.kubenode.dataplane.plugins.module_utils import _fwmodel as fw


def ports(rules):
    return {(r["protocol"], r["ports"]) for r in rules}


def test_worker_with_calico_opens_the_kubeadm_and_calico_worker_ports_only():
    got = ports(fw.expand({"node_role": "worker"}))
    assert got == {
        ("tcp", "22"), ("tcp", "10250"), ("tcp", "10256"), ("tcp", "30000-32767"), ("udp", "30000-32767"),
        ("tcp", "179"), ("udp", "4789"), ("tcp", "5473"), ("udp", "51820-51821"),
    }
    assert ("tcp", "10251") not in got and ("tcp", "6443") not in got


def test_control_plane_adds_apiserver_etcd_and_components():
    got = ports(fw.expand({"node_role": "control_plane", "cni": "none"}))
    assert {("tcp", "6443"), ("tcp", "2379-2380"), ("tcp", "10257"), ("tcp", "10259")} <= got
    assert ("tcp", "179") not in got


def test_sources_split_by_family_and_groups():
    rules = {r["name"]: r for r in fw.expand({
        "node_role": "worker", "cluster_cidrs": ["10.0.0.0/16", "fd00::/64"], "ssh_sources": ["192.0.2.7"],
    })}
    assert rules["kubelet"]["v4"] == ["10.0.0.0/16"] and rules["kubelet"]["v6"] == ["fd00::/64"]
    assert rules["ssh"]["v4"] == ["192.0.2.7/32"] and not rules["ssh"]["any"]
    assert rules["nodeports_tcp"]["any"]


def test_every_error_is_reported_at_once_with_its_path():
    with pytest.raises(fw.ModelError) as err:
        fw.expand({
            "node_role": "wroker", "cluster_cidrs": ["10.0.0.0/33"],
            "extra_rules": [{"name": "x", "protocol": "tcp", "ports": "90-80"}], "bogus": 1,
        })
    msg = str(err.value)
    assert "$.node_role" in msg and "wroker" in msg
    assert "$.cluster_cidrs[0]" in msg
    assert "$.extra_rules[0].ports" in msg
    assert "bogus" in msg
    assert msg.endswith("nothing was changed")


def test_nft_rendering_is_one_table_with_policy_and_comments():
    text = fw.render_nft({"node_role": "worker", "cni": "none", "cluster_cidrs": ["10.1.0.0/16"]})
    assert text.startswith("table inet kubenode_firewall {")
    assert "policy drop;" in text
    assert 'ip saddr { 10.1.0.0/16 } tcp dport 10250 accept comment "kubelet"' in text
    assert 'tcp dport 30000-32767 accept comment "nodeports_tcp"' in text


def test_iptables_rendering_one_chain_per_family_ending_in_drop():
    chains = fw.render_iptables({"node_role": "worker", "cni": "none", "cluster_cidrs": ["10.1.0.0/16"]})
    assert [c["ip_version"] for c in chains] == ["ipv4", "ipv6"]
    v4, v6 = chains
    assert v4["rules"][-1] == "-j DROP" and v6["rules"][-1] == "-j DROP"
    assert "-s 10.1.0.0/16 -p tcp -m tcp --dport 10250 -m comment --comment kubelet -j ACCEPT" in v4["rules"]
    # a v4-only source list opens nothing for IPv6 on that port
    assert not any("--dport 10250" in r for r in v6["rules"])
    assert "-p ipv6-icmp -j ACCEPT" in v6["rules"]
