"""The iptables role as a new user runs it, on netns hosts, with each backend: it opens what it
should and nothing else (real connections from the peer host, IPv4 and IPv6), a second run is
changed=false, and kube-proxy's, Calico's and Docker's chains and the rules a user added by hand
(with ansible.builtin.iptables) stay byte-identical, counters included."""

from __future__ import annotations

import time

import pytest

from tests.netns.iptables_lab import Listener, chain_lines, foreign_part, probe, save, seed_foreign, strip_counters, tool

pytestmark = pytest.mark.netns

ROLE_VARS = {
    "iptables_node_role": "worker",
    "iptables_cluster_cidrs": ["198.18.0.0/24", "2001:db8:18::/64"],
    "iptables_ssh_sources": ["198.18.0.0/24"],  # no IPv6 source: SSH is closed over IPv6
}


ROLE_TASK = "Apply the node firewall as the owned chain KUBENODE-FIREWALL, jumped to first from INPUT"


def role_result(run) -> dict:
    found = [r for r in run.results if r["task"].endswith(ROLE_TASK)]
    assert found, run.explain()
    return found[-1]["result"]


def _play(backend_note: str, extra: list | None = None) -> list:
    return [{
        "name": f"node firewall ({backend_note})",
        "hosts": "h1",
        "gather_facts": False,
        "tasks": (extra or []) + [{
            "name": "Apply the node firewall",
            "ansible.builtin.include_role": {"name": "kubenode.dataplane.iptables"},
            "vars": ROLE_VARS,
        }],
    }]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_role_opens_what_it_should_and_leaves_the_rest(backend, netns_pair, playbook):
    lab, inv = netns_pair
    h1, h2 = lab.hosts
    seed_foreign(h1, backend)  # with kubelet's hint chain in this backend's mangle table: auto picks it
    user_rule = []
    if backend == "nft":
        # the iptables command of this machine is iptables-nft: a rule added the way users add them
        user_rule = [{
            "name": "A rule added by hand with ansible.builtin.iptables",
            "ansible.builtin.iptables": {"chain": "INPUT", "protocol": "tcp", "destination_port": "8080",
                                         "jump": "ACCEPT", "comment": "added by hand"},
        }]
        added = playbook([{"hosts": "h1", "gather_facts": False, "tasks": user_rule}], inv)
        assert added.rc == 0, added.explain()
    else:
        h1.run([tool("legacy"), "-w", "5", "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-m", "comment",
                "--comment", "added by hand", "-j", "ACCEPT"])
    # count some packets in a foreign rule, to see that its counters survive the change
    probe(h2, [(h1.v4, 9999)] * 3)
    time.sleep(0.5)  # let the last packets of those connections arrive before the snapshot
    before = {f: save(h1, backend, f, counters=True) for f in ("ipv4", "ipv6")}
    assert "[3:180] -A INPUT -p tcp -m tcp --dport 9999" in before["ipv4"]

    check = playbook(_play(backend), inv, check=True, diff=True)
    assert check.rc == 0, check.explain()
    task = role_result(check)
    assert task["changed"] is True
    assert "-A KUBENODE-FIREWALL -s 198.18.0.0/24 -p tcp -m tcp --dport 10250 -m comment --comment kubelet -j ACCEPT" in task["diff"]["after"]
    # without counters: a late packet of the probes above (a final ACK under load) may still count in a
    # built-in chain's policy; the foreign rule's own counters must be as they were
    checked_v4 = save(h1, backend, "ipv4", counters=True)
    assert strip_counters(checked_v4) == strip_counters(before["ipv4"]), "check mode changed something"
    assert "[3:180] -A INPUT -p tcp -m tcp --dport 9999" in checked_v4, "check mode reset a foreign rule's counters"
    assert strip_counters(save(h1, backend, "ipv6")) == strip_counters(before["ipv6"]), "check mode changed something"

    first = playbook(_play(backend), inv)
    assert first.rc == 0, first.explain()
    result = role_result(first)
    assert result["changed"] is True
    assert result["backend"] == backend, result["backend_reason"]

    after = {f: save(h1, backend, f, counters=True) for f in ("ipv4", "ipv6")}
    # rules byte-identical; counters: the foreign rule's kept (a late probe packet may still count in a
    # policy, and IPv6 neighbour discovery and MLD packets arrive by themselves)
    assert strip_counters(foreign_part(after["ipv4"])) == strip_counters(foreign_part(before["ipv4"]))
    assert "[3:180] -A INPUT -p tcp -m tcp --dport 9999" in after["ipv4"], "the change reset a foreign rule's counters"
    assert strip_counters(foreign_part(after["ipv6"])) == strip_counters(foreign_part(before["ipv6"]))
    assert "added by hand" in foreign_part(after["ipv4"])
    # the jump is first in INPUT, the owned chain is there, in this backend only
    assert save(h1, backend).split("-A INPUT ", 2)[1].strip() == "-j KUBENODE-FIREWALL"
    other = "legacy" if backend == "nft" else "nft"
    assert "KUBENODE" not in h1.run([tool(other, "ipv4", "-save")]).stdout

    with Listener(h1, [22, 10250, 10251, 6443, 30080]):
        seen = probe(h2, [(h1.v4, 22), (h1.v4, 10250), (h1.v4, 10251), (h1.v4, 6443), (h1.v4, 30080),
                          (h1.v6, 22), (h1.v6, 10250), (h1.v6, 10251)])
    assert seen == {
        f"{h1.v4} 22": "open", f"{h1.v4} 10250": "open", f"{h1.v4} 10251": "dropped", f"{h1.v4} 6443": "dropped",
        f"{h1.v4} 30080": "open", f"{h1.v6} 22": "dropped", f"{h1.v6} 10250": "open", f"{h1.v6} 10251": "dropped",
    }

    counted = chain_lines(save(h1, backend, counters=True), "KUBENODE-FIREWALL")
    second = playbook(_play(backend), inv)
    assert second.rc == 0, second.explain()
    assert role_result(second)["changed"] is False
    # nothing was written: the owned chain's counters (non-zero after the probes) are still there
    assert chain_lines(save(h1, backend, counters=True), "KUBENODE-FIREWALL") == counted
    assert any(not ln.startswith("[0:0]") for ln in counted)
