"""iptables_ruleset on the real-kernel VM, over SSH: persisted owned chains come back after a real
reboot without kube-proxy's rules, and confirm_timeout gives SSH back after rules that lock it out."""

from __future__ import annotations

import time

import pytest

from tests.harness import ansible_run

pytestmark = pytest.mark.vm

MODULE = "kubenode.dataplane.iptables_ruleset"
UNIT = "kubenode-iptables-ipv4-filter-KUBENODE-FIREWALL.service"
FIREWALL = {"chain": "KUBENODE-FIREWALL", "jump_from": ["INPUT"], "rules": [
    "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-i lo -j ACCEPT", "-p tcp --dport 22 -j ACCEPT",
    "-p icmp -j ACCEPT", "-j DROP"]}
KUBE_PROXY = "\n".join([
    "*nat", ":KUBE-SERVICES - [0:0]",
    "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j RETURN", "COMMIT", ""])


def play(tasks: list) -> list:
    return [{"name": "iptables on the VM", "hosts": "all", "gather_facts": False, "tasks": tasks}]


def owned(machine) -> list[str]:
    out = machine.ssh("iptables-save", "-t", "filter").stdout
    return [ln for ln in out.splitlines() if "KUBENODE-FIREWALL" in ln and not ln.startswith(":")]


@pytest.fixture(autouse=True, scope="module")
def leave_no_boot_state(vm):
    """The session's VM goes on to other tests: the persisted chain (whose conntrack rule loads nf_conntrack
    at boot) and its unit must not outlive this test."""
    yield
    machine, _inv = vm
    # one string: the VM's login shell runs it
    machine.ssh(f"systemctl disable --now {UNIT}; rm -f /etc/systemd/system/{UNIT} "
                "/etc/kubenode-dataplane/iptables/*; systemctl daemon-reload; "
                "iptables -D INPUT -j KUBENODE-FIREWALL; iptables -F KUBENODE-FIREWALL; iptables -X KUBENODE-FIREWALL; "
                "iptables -t nat -F KUBE-SERVICES; iptables -t nat -D PREROUTING -m comment "
                "--comment 'kubernetes service portals' -j KUBE-SERVICES; iptables -t nat -X KUBE-SERVICES; true",
                check=False)


def test_persisted_chain_survives_a_reboot_and_confirm_timeout_undoes_a_lockout(vm):
    machine, inv = vm
    seeded = ansible_run.playbook(play([
        {"name": "kube-proxy-like rules", "ansible.builtin.command": {"argv": ["iptables-restore", "-w", "5", "--noflush"],
                                                                      "stdin": KUBE_PROXY}, "changed_when": True},
        {"name": "persist", MODULE: {"chains": [FIREWALL], "persist": True}},
        {"name": "persist again", MODULE: {"chains": [FIREWALL], "persist": True}},
    ]), inv)
    assert seeded.rc == 0, seeded.explain()
    assert seeded.task("persist")["result"]["changed"] is True
    assert seeded.task("persist again")["result"]["changed"] is False
    assert machine.ssh("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    before = owned(machine)
    assert before[0] == "-A INPUT -j KUBENODE-FIREWALL" and len(before) == 6

    machine.reboot()
    assert owned(machine) == before, "the owned chain did not come back at boot"
    assert "KUBE-SERVICES" not in machine.ssh("iptables-save").stdout, "kube-proxy's rules were persisted"
    assert machine.ssh("systemctl", "is-active", UNIT).stdout.strip() == "active"
    after_boot = ansible_run.playbook(play([{"name": "after boot", MODULE: {"chains": [FIREWALL], "persist": True}}]), inv)
    assert after_boot.rc == 0, after_boot.explain()
    assert after_boot.task("after boot")["result"]["changed"] is False

    # new rules that keep the open connection but refuse new SSH connections: the usual lockout
    lockout = dict(FIREWALL, rules=["-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-j DROP"])
    start = time.monotonic()
    cut = ansible_run.playbook(play([{"name": "lock myself out", MODULE: {"chains": [lockout], "confirm_timeout": 20}}]), inv)
    result = cut.task("lock myself out")
    assert result["status"] in ("failed", "unreachable"), cut.explain()
    assert "puts the previous chains back by itself" in result["result"].get("msg", ""), cut.explain()
    assert machine.ssh("true", check=False, timeout=30).returncode != 0, "SSH should be locked out now"
    time.sleep(max(0.0, 24 - (time.monotonic() - start)))
    for _attempt in range(20):
        if machine.ssh("true", check=False, timeout=30).returncode == 0:
            break
        time.sleep(1)
    assert machine.ssh("true", check=False).returncode == 0, "SSH did not come back after the rollback"
    assert owned(machine) == before
    back = ansible_run.playbook(play([{"name": "unchanged", MODULE: {"chains": [FIREWALL], "persist": True}}]), inv)
    assert back.rc == 0, back.explain()
    assert back.task("unchanged")["result"]["changed"] is False
