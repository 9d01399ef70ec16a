"""nft_ruleset and the nftables role on the real-kernel VM, where systemd runs and Ansible comes over SSH.

One test, in order, to keep to one boot: the role with persistence (Debian's stock nftables.conf and
nftables.service), reload and restart of the service next to a foreign table, a reboot, the
rollback process in its own systemd scope, and rules that cut Ansible's own SSH connection.
"""

from __future__ import annotations

import subprocess
import time

import pytest

pytestmark = pytest.mark.vm

MODULE = "kubenode.dataplane.nft_ruleset"
ROLE_APPLY = "kubenode.dataplane.nftables : Apply the node firewall (table inet kubenode_firewall)"
ROLE_CONFIRM = "kubenode.dataplane.nftables : Confirm the node firewall (cancels the automatic rollback)"
KUBE_PROXY = """table ip kube-proxy {
\tcomment "rules for kube-proxy"
\tchain services {
\t\tip daddr 10.96.0.1 tcp dport 443 counter accept
\t}
}
"""


def role_play(**extra):
    return [{"hosts": "all", "gather_facts": False, "roles": [{"role": "kubenode.dataplane.nftables"}],
             "vars": dict({"nftables_node_role": "worker"}, **extra)}]


def changed(run, name) -> bool:
    rec = run.task(name)
    return rec["status"] == "ok" and bool(rec["result"].get("changed"))


def test_nft_on_a_real_node(vm, playbook):
    machine, inv = vm

    def sh(*argv, check=True):
        return machine.ssh(*argv, check=check)

    t0 = time.monotonic()

    def phase(what):
        print(f"[{time.monotonic() - t0:6.1f} s] {what}", flush=True)

    def stateless(table):
        # -s: without counter values, which traffic (this SSH session) moves
        return sh("nft", "-s", "list", "table", *table.split()).stdout

    # ---- the role with its defaults: persisted, confirmed over a new SSH connection
    stock_conf = sh("cat", "/etc/nftables.conf").stdout
    assert "\nflush ruleset\n" in stock_conf
    subprocess.run(machine.ssh_argv("nft", "-f", "-"), input=KUBE_PROXY, text=True, capture_output=True, check=True)
    foreign = sh("nft", "-a", "list", "table", "ip", "kube-proxy").stdout
    run = playbook(role_play(), inv)
    assert run.rc == 0, run.explain()
    applied = run.task(ROLE_APPLY)["result"]
    assert applied["changed"] and applied["persist_deferred"], applied
    assert applied["rollback"]["mechanism"] == "systemd scope", applied["rollback"]
    confirmed = run.task(ROLE_CONFIRM)["result"]
    assert confirmed["changed"] and "/etc/nftables.d/kubenode-inet-kubenode_firewall.nft" in confirmed["persisted"]
    assert sh("systemctl", "is-enabled", "nftables.service").stdout.strip() == "enabled"
    conf = sh("cat", "/etc/nftables.conf").stdout
    assert not [ln for ln in conf.splitlines() if ln.strip() == "flush ruleset"]
    assert "delete table inet filter" in conf and 'include "/etc/nftables.d/kubenode-*.nft"' in conf
    owned = stateless("inet kubenode_firewall")
    assert "tcp dport 10250 accept" in owned and "policy drop" in owned

    phase("role applied")
    # ---- start, reload and restart of nftables.service leave kube-proxy's table alone, handles included
    # (the role enables the service; what it loads at boot is loaded here by starting it)
    sh("systemctl", "start", "nftables.service")
    assert sh("nft", "-a", "list", "table", "ip", "kube-proxy").stdout == foreign
    assert stateless("inet kubenode_firewall") == owned
    sh("systemctl", "reload", "nftables.service")
    assert sh("nft", "-a", "list", "table", "ip", "kube-proxy").stdout == foreign
    sh("systemctl", "restart", "nftables.service")
    assert sh("nft", "-a", "list", "table", "ip", "kube-proxy").stdout == foreign
    assert stateless("inet kubenode_firewall") == owned

    phase("service reloaded")
    again = playbook(role_play(), inv)
    assert again.rc == 0 and again.changed() == 0, again.explain()

    phase("role again")
    # ---- a reboot brings the owned table back from the files
    machine.reboot()
    assert sh("systemctl", "is-active", "nftables.service").stdout.strip() == "active"
    assert stateless("inet kubenode_firewall") == owned
    assert sh("nft", "list", "table", "ip", "kube-proxy", check=False).returncode != 0  # not ours, not persisted

    phase("rebooted")
    # ---- the rollback process lives in a systemd scope of its own while it is pending
    harmless = "table inet knvm {\n\tchain c {\n\t\tcounter\n\t}\n}\n"
    run = playbook([{"hosts": "all", "gather_facts": False,
                     "tasks": [{"name": "apply", MODULE: {"content": harmless, "confirm_timeout": 120}}]}], inv)
    rollback = run.task("apply")["result"]["rollback"]
    assert rollback["mechanism"] == "systemd scope", run.explain()
    assert sh("systemctl", "is-active", rollback["unit"]).stdout.strip() == "active"
    run = playbook([{"hosts": "all", "gather_facts": False,
                     "tasks": [{"name": "confirm", MODULE: {"tables": ["inet knvm"], "confirm": True}}]}], inv)
    assert changed(run, "confirm"), run.explain()
    assert sh("systemctl", "is-active", rollback["unit"], check=False).stdout.strip() != "active"

    phase("scope checked")
    # ---- rules that cut Ansible's own SSH connection, both ways: the task cannot even report until the
    # rollback has run by itself; the confirmation that follows says the change is not in force
    before = stateless("inet knvm")
    lockout = ("table inet knvm {\n\tchain in {\n\t\ttype filter hook input priority -300; policy accept;\n"
               "\t\ttcp dport 22 drop\n\t}\n\tchain out {\n\t\ttype filter hook output priority -300; policy accept;\n"
               "\t\ttcp sport 22 drop\n\t}\n}\n")
    started = time.monotonic()
    run = playbook([{"hosts": "all", "gather_facts": False, "tasks": [
        {"name": "lock out", MODULE: {"content": lockout, "confirm_timeout": 15}},
        {"name": "new connection", "ansible.builtin.meta": "reset_connection"},
        {"name": "confirm", MODULE: {"tables": ["inet knvm"], "confirm": True}, "ignore_errors": True},
    ]}], inv, timeout=600)
    took = time.monotonic() - started
    assert changed(run, "lock out"), run.explain()
    assert took >= 15, f"the locked-out task reported after {took:.0f} s, before the rollback could have run"
    late = run.task("confirm")
    assert late["status"] in ("failed", "ignored") and "the rollback ran" in late["result"]["msg"], late
    assert stateless("inet knvm") == before

    phase("locked out and rolled back")
    # ---- leave the VM as we found it (other tests share it): the role removes its table and file
    run = playbook(role_play(nftables_state="absent"), inv)
    assert run.rc == 0, run.explain()
    assert sh("nft", "list", "table", "inet", "kubenode_firewall", check=False).returncode != 0
    assert sh("test", "-e", "/etc/nftables.d/kubenode-inet-kubenode_firewall.nft", check=False).returncode != 0
    sh("nft", "delete", "table", "inet", "knvm")
    sh("systemctl", "disable", "--now", "nftables.service")
