"""The node role refuses a bad spec on the controller, before any task reaches a node.

The molecule scenarios of roles/node run good specs on the VM; this is the other half of the role's
contract, and it needs no node at all. The inventory host is a network namespace that does not exist
(the collection's netns connection): a task that tried to reach it would end unreachable, and nothing
can be written anywhere even if the role regressed, so the test is safe on any machine.
"""

from __future__ import annotations

import json

import pytest

from tests.harness import ansible_run

pytestmark = pytest.mark.netns

VALIDATE = "kubenode.dataplane.node : Validate the node spec on the controller before anything touches the node"
BAD_SPEC = {
    "firewal": {},
    "iptables_backend": "xtables",
    "firewall": {"backend": "nftables", "cluster_cidrs": ["10.0.0.0/40"]},
    "kube_proxy": {"mode": "userspace", "target": "file"},
}


@pytest.fixture
def nowhere(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"node1": {
        "ansible_connection": "kubenode.dataplane.netns",
        "ansible_netns_name": "kn-no-such-namespace",
        "ansible_python_interpreter": "/usr/bin/python3",
    }}}}))
    return inventory


@pytest.mark.parametrize("check", [False, True], ids=["run", "check-mode"])
def test_a_bad_spec_is_refused_with_every_problem_before_any_task_reaches_the_node(nowhere, check):
    play = [{"name": "node", "hosts": "all", "gather_facts": False,
             "roles": [{"role": "kubenode.dataplane.node", "vars": {"node_spec": BAD_SPEC}}]}]
    run = ansible_run.playbook(play, nowhere, check=check)
    assert run.rc == 2, run.explain()
    assert run.recap()["node1"]["failed"] == 1 and run.recap()["node1"]["unreachable"] == 0, run.explain()
    # the role's argument validation and the spec check, both on the controller, and nothing after them
    assert [r["task"] for r in run.results][-1] == VALIDATE, run.explain()
    assert all(r["status"] != "unreachable" for r in run.results), run.explain()
    msg = run.task(VALIDATE)["result"]["msg"]
    assert "invalid node spec (4 problems)" in msg, msg
    for problem in (
        "$: Additional properties are not allowed ('firewal' was unexpected)",
        "$.iptables_backend: 'xtables' is not one of",
        "$.kube_proxy.mode: 'userspace' is not one of",
        "$.firewall.cluster_cidrs[0]: '10.0.0.0/40' is not an IP address or network",
    ):
        assert problem in msg, msg
    assert msg.rstrip().endswith("no node was touched"), msg
