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
    t0 = time.monotonic()

    def phase(what):
        print(f"[{time.monotonic() - t0:6.1f} s] {what}", flush=True)

    def remote(script: str, stdin_first: str = "") -> dict:
        """Run a shell script on the VM in one SSH round trip; '=== name' lines start named sections."""
        proc = subprocess.run(machine.ssh_argv("bash", "-s"), input=stdin_first + script, text=True,
                              capture_output=True, check=False, timeout=300)
        assert proc.returncode != 255, proc.stderr  # ssh's own failure; the script's last status does not matter
        sections, name = {}, ""
        for line in proc.stdout.splitlines(keepends=True):
            if line.startswith("=== "):
                name = line[4:].strip()
                sections[name] = ""
            else:
                sections[name] = sections.get(name, "") + line
        return sections

    # -s: without counter values (this SSH session's own packets move them); -a: with handles
    state = ("echo '=== foreign'; nft -a list table ip kube-proxy 2>&1; echo '=== owned'; nft -s list table inet kubenode_firewall 2>&1; "
             "echo '=== knvm'; nft -s list table inet knvm 2>&1\n")

    # ---- the role with its defaults: persisted, confirmed over a new SSH connection
    first = remote("cat /etc/nftables.conf; nft -f - <<'EOF'\n" + KUBE_PROXY + "EOF\n" + state)
    assert "\nflush ruleset\n" in first[""]
    run = playbook(role_play(), inv)
    assert run.rc == 0, run.explain()
    applied = run.task(ROLE_APPLY)["result"]
    assert applied["changed"] and applied["persist_deferred"], applied
    assert applied["rollback"]["mechanism"] == "systemd scope", applied["rollback"]
    confirmed = run.task(ROLE_CONFIRM)["result"]
    assert confirmed["changed"] and "/etc/nftables.d/kubenode-inet-kubenode_firewall.nft" in confirmed["persisted"]
    now = remote("echo '=== enabled'; systemctl is-enabled nftables.service; echo '=== conf'; cat /etc/nftables.conf; " + state)
    assert now["enabled"].strip() == "enabled"
    assert not [ln for ln in now["conf"].splitlines() if ln.strip() == "flush ruleset"]
    assert "delete table inet filter" in now["conf"] and 'include "/etc/nftables.d/kubenode-*.nft"' in now["conf"]
    assert now["foreign"] == first["foreign"]
    owned = now["owned"]
    assert "tcp dport 10250 accept" in owned and "policy drop" in owned
    phase("role applied")

    # ---- start (what boot does), reload and restart of nftables.service: kube-proxy's table stays, handles included
    for verb in ("start", "reload", "restart"):
        after = remote(f"systemctl {verb} nftables.service\n" + state)
        assert after["foreign"] == first["foreign"], verb
        assert after["owned"] == owned, verb
    again = playbook(role_play(), inv)
    assert again.rc == 0 and again.changed() == 0, again.explain()
    phase("service reloaded and role run again")

    # ---- a reboot brings the owned table back from the files (kube-proxy's was never ours to persist)
    machine.reboot()
    booted = remote("echo '=== active'; systemctl is-active nftables.service\n" + state)
    assert booted["active"].strip() == "active"
    assert booted["owned"] == owned
    assert "No such file or directory" in booted["foreign"]
    phase("rebooted")

    # ---- rules that cut Ansible's own SSH connection, both ways: the task cannot even report until the
    # rollback process (in its own systemd scope) has restored the previous state by itself; the
    # confirmation that follows over a new connection says the change is not in force
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
    rollback = run.task("lock out")["result"]["rollback"]
    assert rollback["mechanism"] == "systemd scope", rollback
    assert took >= 15, f"the locked-out task reported after {took:.0f} s, before the rollback could have run"
    late = run.task("confirm")
    assert late["status"] in ("failed", "ignored") and "the rollback ran" in late["result"]["msg"], late
    after = remote(state + f"echo '=== journal'; journalctl --no-pager -o cat -u {rollback['unit']}\n")
    assert "No such file or directory" in after["knvm"], after["knvm"]  # the table did not exist before
    assert "Started" in after["journal"] and rollback["unit"] in after["journal"], after["journal"]
    phase("locked out and rolled back")

    # ---- leave the VM as we found it (other tests share it): the role removes its table and file
    run = playbook(role_play(nftables_state="absent"), inv)
    assert run.rc == 0, run.explain()
    gone = remote("systemctl disable --now nftables.service >/dev/null 2>&1\n" + state + "echo '=== file'; ls /etc/nftables.d\n")
    assert "No such file or directory" in gone["owned"] and gone["file"].strip() == ""
