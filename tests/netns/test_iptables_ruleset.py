"""kubenode.dataplane.iptables_ruleset on netns hosts, with the real iptables of both backends."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.harness import ansible_run
from tests.netns.iptables_lab import Listener, chain_lines, foreign_part, probe, save, seed_foreign, strip_counters

pytestmark = pytest.mark.netns

MODULE = "kubenode.dataplane.iptables_ruleset"


def play(tasks: list, hosts: str = "h1", vars_files: list | None = None) -> list:
    p = {"name": "iptables_ruleset", "hosts": hosts, "gather_facts": False, "tasks": tasks}
    if vars_files:
        p["vars_files"] = vars_files
    return [p]


def task(name: str, args: dict, **extra) -> dict:
    return {"name": name, MODULE: args, **extra}


def many_rules(n: int) -> list[str]:
    # spelled the way people write them (no -m tcp, no /32): the normaliser has work to do
    return [f"-s 10.{i // 65536}.{(i // 256) % 256}.{i % 256} -p tcp --dport {1 + i % 60000} -j ACCEPT" for i in range(n)]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_idempotent_at_10_and_10000_rules(backend, netns_pair, playbook, tmp_path):
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    seed_foreign(h1, backend)
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"small": many_rules(10), "big": many_rules(10000)}))
    # the same rules as one text, one per line, with a comment and a blank line; the last one left out
    as_text = tmp_path / "allow.rules"
    as_text.write_text("# allow list\n\n" + "\n".join(many_rules(10000)[:-1]) + "\n")
    text_rules = "{{ lookup('ansible.builtin.file', '%s') }}" % as_text
    chain = {"chain": "KUBENODE-MANY", "jump_from": ["INPUT"], "jump_position": 2}
    run = playbook(play([
        task("10 rules", {"backend": backend, "chains": [dict(chain, rules="{{ small }}")]}),
        task("10 rules again", {"backend": backend, "chains": [dict(chain, rules="{{ small }}")]}),
        task("10000 rules", {"backend": backend, "chains": [dict(chain, rules="{{ big }}")]}),
        task("10000 rules again", {"backend": backend, "chains": [dict(chain, rules="{{ big }}")]}),
        task("9999 rules as a text", {"backend": backend, "chains": [dict(chain, rules=text_rules)]}),
        task("9999 rules as a text again", {"backend": backend, "chains": [dict(chain, rules=text_rules)]}),
    ], vars_files=[str(rules)]), inv)
    assert run.rc == 0, run.explain()
    changed = {name: run.task(name)["result"]["changed"] for name in
               ("10 rules", "10 rules again", "10000 rules", "10000 rules again", "9999 rules as a text",
                "9999 rules as a text again")}
    assert changed == {"10 rules": True, "10 rules again": False, "10000 rules": True, "10000 rules again": False,
                       "9999 rules as a text": True, "9999 rules as a text again": False}
    assert run.task("9999 rules as a text")["result"]["chains"][0]["rules"] == 9999
    text = save(h1, backend)
    lines = chain_lines(text, "KUBENODE-MANY")
    assert len(lines) == 9999
    assert lines[0] == "-A KUBENODE-MANY -s 10.0.0.0/32 -p tcp -m tcp --dport 1 -j ACCEPT"
    assert lines[-1] == "-A KUBENODE-MANY -s 10.0.39.14/32 -p tcp -m tcp --dport 9999 -j ACCEPT"
    # position 2 among INPUT's rules, after Calico's jump and before kube-proxy's
    assert [ln for ln in text.splitlines() if ln.startswith("-A INPUT ")][:3] == [
        '-A INPUT -m comment --comment "cali:Cz_u1IQiXIMmKD4c" -j cali-INPUT',
        "-A INPUT -j KUBENODE-MANY",
        "-A INPUT -j KUBE-FIREWALL",
    ]


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_rules_printed_back_once_are_remembered(backend, netns_pair, playbook):
    """The first apply of new rules is read back in full (and only then remembered); a later apply of the same
    rules uses the remembered form, and with the nft backend is verified by the nf_tables generation."""
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    nonce = os.urandom(3).hex()
    chain = {"chain": "KUBENODE-REMEMBER", "jump_from": ["INPUT"],
             "rules": [f"-p tcp --dport 7001 -m comment --comment {nonce} -j ACCEPT", "-s 192.0.2.7 -j DROP"]}
    run = playbook(play([task("first", {"backend": backend, "chains": [chain]})]), inv)
    assert run.rc == 0, run.explain()
    assert run.task("first")["result"]["verified"] == "re-read"
    printed = chain_lines(save(h1, backend), "KUBENODE-REMEMBER")
    assert printed == [f'-A KUBENODE-REMEMBER -p tcp -m tcp --dport 7001 -m comment --comment {nonce} -j ACCEPT',
                       "-A KUBENODE-REMEMBER -s 192.0.2.7/32 -j DROP"]
    for argv in (["-D", "INPUT", "-j", "KUBENODE-REMEMBER"], ["-F", "KUBENODE-REMEMBER"], ["-X", "KUBENODE-REMEMBER"]):
        h1.run([f"iptables-{backend}", "-w"] + argv)
    run = playbook(play([task("again", {"backend": backend, "chains": [chain]}),
                         task("no-op", {"backend": backend, "chains": [chain]})]), inv)
    assert run.rc == 0, run.explain()
    again = run.task("again")["result"]
    assert again["changed"] and again["verified"] == ("generation" if backend == "nft" else "re-read"), again
    assert run.task("no-op")["result"]["changed"] is False
    assert chain_lines(save(h1, backend), "KUBENODE-REMEMBER") == printed


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_check_mode_and_a_bad_rule_change_nothing(backend, netns_pair, playbook):
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    seed_foreign(h1, backend)
    good = [
        {"chain": "KUBENODE-IN", "jump_from": "INPUT", "rules": ["-p tcp --dport ssh -j ACCEPT", "-j DROP"]},
        {"chain": "KUBENODE-IN", "ip_version": "ipv6", "jump_from": "INPUT", "rules": ["-p icmpv6 -j ACCEPT"]},
        {"chain": "KUBENODE-DNAT", "table": "nat", "jump_from": ["PREROUTING", "OUTPUT"],
         "jump_spec": "-m addrtype --dst-type LOCAL",
         "rules": ["-p tcp --dport 8443 -j DNAT --to-destination 10.0.0.10:443"]},
    ]
    first = playbook(play([task("apply", {"backend": backend, "chains": good})]), inv)
    assert first.rc == 0, first.explain()
    snap = {f: save(h1, backend, f, counters=True) for f in ("ipv4", "ipv6")}

    changed = [dict(good[0], rules=["-p tcp --dport 22 -j ACCEPT", "-p tcp --dport 10250 -j ACCEPT", "-j DROP"]),
               good[1], good[2]]
    bad_nat = [changed[0], good[1], dict(good[2], rules=["-p tcp --dport 8443 -j DNAT --to-destination nowhere"])]
    bad_data = [dict(good[0], rules=[{"protocol": "tcp", "dport": 70000, "jump": "ACCEPT"}, {"jump": "ACCEPT", "goto": "X"}])]
    run = playbook(play([
        task("check mode", {"backend": backend, "chains": changed}, check_mode=True, diff=True),
        task("valid ipv4 filter change, bad nat rule", {"backend": backend, "chains": bad_nat}, ignore_errors=True),
        task("bad nat rule in check mode", {"backend": backend, "chains": bad_nat}, check_mode=True,
             ignore_errors=True),
        task("bad rules as data", {"backend": backend, "chains": bad_data}, ignore_errors=True),
        task("unchanged", {"backend": backend, "chains": good}),
    ]), inv)
    assert run.rc == 0, run.explain()
    check = run.task("check mode")["result"]
    assert check["changed"] is True
    assert "-A KUBENODE-IN -p tcp -m tcp --dport 10250 -j ACCEPT" in check["diff"]["after"]
    assert "--dport 10250" not in check["diff"]["before"]
    for name in ("valid ipv4 filter change, bad nat rule", "bad nat rule in check mode"):
        res = run.task(name)
        assert res["status"] == "ignored", res
        msg = res["result"]["msg"]
        assert msg.startswith("iptables-restore rejected the ipv4 nat table at "), msg
        assert "($.chains[2].rules[0])" in msg and msg.endswith("nothing was changed"), msg
    data = run.task("bad rules as data")["result"]
    assert data["errors"][0].startswith("$.chains[0].rules[0].dport: 70000 is greater than the maximum of 65535"), data
    assert data["errors"][1].startswith("$.chains[0].rules[1]: "), data
    assert run.task("unchanged")["result"]["changed"] is False
    assert save(h1, backend, "ipv4", counters=True) == snap["ipv4"]
    assert strip_counters(save(h1, backend, "ipv6")) == strip_counters(snap["ipv6"])


def test_jump_positions_duplicates_and_absent(netns_pair, playbook):
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    seed_foreign(h1, "nft")
    chains = [
        {"chain": "KUBENODE-A", "jump_from": ["INPUT"], "jump_position": 2, "rules": ["-j RETURN"]},
        {"chain": "KUBENODE-Z", "jump_from": ["INPUT", "FORWARD"], "jump_position": -1,
         "jump_spec": "-m comment --comment 'last of all'", "rules": ["-j RETURN"]},
    ]
    first = playbook(play([task("apply", {"chains": chains})]), inv)
    assert first.rc == 0, first.explain()
    inputs = [ln for ln in save(h1, "nft").splitlines() if ln.startswith("-A INPUT ")]
    assert inputs[1] == "-A INPUT -j KUBENODE-A"
    assert inputs[-1] == '-A INPUT -m comment --comment "last of all" -j KUBENODE-Z'
    # kube-proxy restarts and puts its jump on top; someone adds our jump a second time by hand
    h1.run(["iptables-nft", "-w", "-I", "INPUT", "1", "-j", "KUBE-FIREWALL"])
    h1.run(["iptables-nft", "-w", "-A", "INPUT", "-j", "KUBENODE-A"])
    h1.run(["iptables-nft", "-w", "-A", "OUTPUT", "-j", "KUBENODE-A"])
    again = playbook(play([
        task("put back", {"chains": chains}, diff=True),
        task("stable", {"chains": chains}),
        task("remove A", {"chains": [dict(chains[0], state="absent")]}),
        task("remove A again", {"chains": [dict(chains[0], state="absent")]}),
    ]), inv)
    assert again.rc == 0, again.explain()
    assert again.task("put back")["result"]["changed"] is True
    assert again.task("stable")["result"]["changed"] is False
    assert again.task("remove A")["result"]["changed"] is True
    assert again.task("remove A again")["result"]["changed"] is False
    text = save(h1, "nft")
    inputs = [ln for ln in text.splitlines() if ln.startswith("-A INPUT ")]
    assert inputs == [
        "-A INPUT -j KUBE-FIREWALL",
        '-A INPUT -m comment --comment "cali:Cz_u1IQiXIMmKD4c" -j cali-INPUT',
        "-A INPUT -j KUBE-FIREWALL",
        '-A INPUT -p tcp -m tcp --dport 9999 -m comment --comment "counted foreign rule" -j ACCEPT',
        '-A INPUT -m comment --comment "last of all" -j KUBENODE-Z',
    ]
    assert "KUBENODE-A" not in text
    assert [ln for ln in text.splitlines() if ln.startswith("-A FORWARD ")][-1].endswith("-j KUBENODE-Z")


def test_waits_for_the_xtables_lock_and_never_duplicates(netns_pair, tmp_path, monkeypatch):
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    # a private lock file (iptables honours XTABLES_LOCKFILE): the machine's own lock is never held
    lock = tmp_path / "xtables.lock"
    lock.touch()
    monkeypatch.setenv("XTABLES_LOCKFILE", str(lock))
    seed_foreign(h1, "legacy", hint=True)
    chains = [{"chain": "KUBENODE-LOCK", "jump_from": "INPUT", "rules": ["-p tcp --dport 22 -j ACCEPT", "-j DROP"]}]
    holder = subprocess.Popen(["flock", str(lock), "sleep", "4"])
    time.sleep(0.3)
    results: dict[int, ansible_run.Run] = {}

    def run(i: int) -> None:
        results[i] = ansible_run.playbook(play([task("apply", {"backend": "legacy", "wait": 30, "chains": chains})]), inv)

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in (1, 2)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    elapsed = time.monotonic() - start
    holder.wait()
    for r in results.values():
        assert r.rc == 0, r.explain()
    assert sorted(r.task("apply")["result"]["changed"] for r in results.values()) == [False, True]
    assert elapsed > 3.5, "the writes did not wait for the lock"
    text = save(h1, "legacy")
    assert text.count("-A INPUT -j KUBENODE-LOCK") == 1
    assert len(chain_lines(text, "KUBENODE-LOCK")) == 2


def test_confirm_timeout_rolls_back_unless_confirmed(netns_pair, playbook):
    lab, inv = netns_pair
    h1, h2 = lab.hosts
    base = [{"chain": "KUBENODE-FW", "jump_from": "INPUT", "rules": ["-p tcp --dport 5001 -j ACCEPT", "-p tcp -j DROP"]}]
    cut = [dict(base[0], rules=["-p tcp -j DROP"])]
    assert playbook(play([task("base", {"chains": base})]), inv).rc == 0
    with Listener(h1, [5001]):
        assert probe(h2, [(h1.v4, 5001)]) == {f"{h1.v4} 5001": "open"}
        pending = playbook(play([task("cut, not confirmed", {"chains": cut, "confirm_timeout": 3, "auto_confirm": False})]), inv)
        assert pending.rc == 0, pending.explain()
        rb = pending.task("cut, not confirmed")["result"]["rollback"]
        assert rb["confirmed"] is False
        assert probe(h2, [(h1.v4, 5001)]) == {f"{h1.v4} 5001": "dropped"}
        time.sleep(max(0.0, rb["deadline"] - time.time()) + 1.0)
        assert probe(h2, [(h1.v4, 5001)]) == {f"{h1.v4} 5001": "open"}, "the rollback did not restore access"
        assert chain_lines(save(h1, "nft"), "KUBENODE-FW") == [
            "-A KUBENODE-FW -p tcp -m tcp --dport 5001 -j ACCEPT", "-A KUBENODE-FW -p tcp -j DROP"]
        assert Path(f"/run/kubenode-dataplane/iptables-rollback-{rb['token']}.json.done").exists()

        kept = playbook(play([
            task("cut, confirmed later", {"chains": cut, "confirm_timeout": 3, "auto_confirm": False},
                 register="fw"),
            task("confirm", {"confirm": "{{ fw.rollback.token }}"}),
            task("cut again, confirmed by reconnecting", {"chains": base, "confirm_timeout": 3}),
        ]), inv)
        assert kept.rc == 0, kept.explain()
        assert kept.task("confirm")["result"]["rollback"]["confirmed"] is True
        auto = kept.task("cut again, confirmed by reconnecting")["result"]
        assert auto["changed"] is True and auto["rollback"]["confirmed"] is True
        time.sleep(max(0.0, auto["rollback"]["deadline"] - time.time()) + 1.0)
        # nothing came back: base (the last apply) stays
        assert probe(h2, [(h1.v4, 5001)]) == {f"{h1.v4} 5001": "open"}
        assert chain_lines(save(h1, "nft"), "KUBENODE-FW") == [
            "-A KUBENODE-FW -p tcp -m tcp --dport 5001 -j ACCEPT", "-A KUBENODE-FW -p tcp -j DROP"]
    late = playbook(play([task("confirm too late", {"confirm": rb["token"]}, ignore_errors=True)]), inv)
    assert "already ran" in late.task("confirm too late")["result"]["msg"]


def _unit_commands(unit: str) -> list[list[str]]:
    """ExecStartPre=/ExecStart= lines as argv (what systemd would run; a leading - ignores failure)."""
    out = []
    for line in unit.splitlines():
        key, _sep, value = line.partition("=")
        if key in ("ExecStartPre", "ExecStart"):
            out.append(shlex.split(value.lstrip("-")))
    return out


@pytest.mark.parametrize("backend", ["nft"])
def test_persist_writes_only_owned_chains_and_restores_them(backend, netns_lab, playbook, tmp_path):
    lab, inv = netns_lab
    h1, _h2, h3 = lab.hosts
    seed_foreign(h1, backend)
    dirs = {"persist": True, "persist_dir": str(tmp_path / "etc"), "unit_dir": str(tmp_path / "units")}
    chains = [{"chain": "KUBENODE-FIREWALL", "jump_from": "INPUT", "jump_spec": "-m comment --comment 'node firewall'",
               "rules": ["-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", "-p tcp --dport 22 -j ACCEPT",
                         "-j DROP"]}]
    run = playbook(play([
        task("persist", dict(dirs, backend=backend, chains=chains)),
        task("persist again", dict(dirs, backend=backend, chains=chains)),
    ]), inv)
    assert run.rc == 0, run.explain()
    assert run.task("persist")["result"]["changed"] is True
    assert run.task("persist again")["result"]["changed"] is False
    rules = (tmp_path / "etc" / "ipv4-filter-KUBENODE-FIREWALL.rules").read_text()
    unit_name = "kubenode-iptables-ipv4-filter-KUBENODE-FIREWALL.service"
    unit = (tmp_path / "units" / unit_name).read_text()
    assert os.readlink(tmp_path / "units" / "multi-user.target.wants" / unit_name) == str(tmp_path / "units" / unit_name)
    assert "KUBE-" not in rules and "cali" not in rules and "DOCKER" not in rules
    assert [ln for ln in rules.splitlines() if not ln.startswith("#")] == [
        "*filter", ":KUBENODE-FIREWALL - [0:0]",
        # the rules as given (quoted as iptables-restore reads them): what the apply wrote, and boot writes
        "-A KUBENODE-FIREWALL -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A KUBENODE-FIREWALL -p tcp --dport 22 -j ACCEPT", "-A KUBENODE-FIREWALL -j DROP",
        '-I INPUT 1 -m comment --comment "node firewall" -j KUBENODE-FIREWALL', "COMMIT"]
    assert "Before=network-pre.target" in unit and "WantedBy=multi-user.target" in unit
    # "boot" a node that already has kube-proxy's and Calico's rules: run the unit's commands twice
    # (a start, then a restart) in a fresh namespace
    seed_foreign(h3, backend)
    foreign = foreign_part(save(h3, backend))
    for _start in range(2):
        for argv in _unit_commands(unit):
            h3.run(argv, check=argv[0].endswith("-restore"))
    text = save(h3, backend)
    assert foreign_part(text) == foreign
    assert chain_lines(text, "KUBENODE-FIREWALL") == chain_lines(save(h1, backend), "KUBENODE-FIREWALL")
    assert [ln for ln in text.splitlines() if ln.startswith("-A INPUT ")][0].endswith("-j KUBENODE-FIREWALL")
    assert text.count("-j KUBENODE-FIREWALL") == 1
    gone = playbook(play([task("remove", dict(dirs, backend=backend, chains=[dict(chains[0], state="absent")]))]), inv)
    assert gone.rc == 0, gone.explain()
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == []
    assert not (tmp_path / "units" / unit_name).exists()
    assert "KUBENODE" not in save(h1, backend)
