"""nft_ruleset and the nftables role on netns hosts: real nft, real packets over veth from a peer host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.harness.stock_files import debian_nftables_conf

from ansible_collections.kubenode.dataplane.plugins.module_utils import _nft as nft

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
TRAFFIC = str(HERE / "traffic.py")
FIXTURES = HERE.parent / "unit" / "fixtures" / "nft"
MODULE = "kubenode.dataplane.nft_ruleset"
CORPUS = yaml.safe_load((HERE / "nft_corpus.yml").read_text())
# NFT_MSG_GETGEN, read independently of the module's own code
GETGEN = ("import socket, struct; s = socket.socket(16, 3, 12); s.bind((0, 0)); "
          "s.send(struct.pack('=IHHII', 20, 0xa10, 1, 1, 0) + bytes(4)); print(struct.unpack_from('>I', s.recv(4096), 24)[0])")
# what the corpus entries that say `needs` need, as the kernel shows it: a probe it must accept
PROBES = {
    "secmark": 'table inet knprobe {\n\tsecmark s {\n\t\t"system_u:object_r:ssh_server_packet_t:s0"\n\t}\n}\n',
    "flowtable": "table inet knprobe {\n\tflowtable f {\n\t\thook ingress priority 0\n\t\tdevices = { lo }\n\t}\n}\n",
}


# ------------------------------------------------------------------ helpers


def listen(host, ports):
    """Start an echo server on ``ports`` inside ``host``; returns the process (kill it when done)."""
    proc = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, TRAFFIC, "serve"] + [str(p) for p in ports],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def probe(client, addr, ports) -> dict:
    out = client.run([sys.executable, TRAFFIC, "probe", addr] + [str(p) for p in ports]).stdout
    return {int(k): v for k, v in json.loads(out).items()}


def foreign_tables(host) -> None:
    """What kube-proxy's nftables mode and kube-proxy's iptables mode (through iptables-nft) leave on a node."""
    host.run(["nft", "-f", str(FIXTURES / "kube-proxy.input.nft")])
    for argv in (
        ["-N", "KUBE-FIREWALL"],
        ["-N", "KUBE-SERVICES"],
        ["-I", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-A", "KUBE-FIREWALL", "-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8", "-m", "comment", "--comment",
         "block incoming localnet connections", "-j", "DROP"],
        ["-A", "KUBE-SERVICES", "-d", "10.96.0.10/32", "-p", "udp", "--dport", "53", "-j", "ACCEPT"],
    ):
        host.run(["iptables-nft", "-t", "filter"] + argv)


def snapshot(host, only=None) -> str:
    """Every table but the owned ones (or the ``only`` ones), with handles and counters: equal snapshots mean
    nothing was recreated or changed."""
    listed = host.run(["nft", "-a", "list", "tables"]).stdout.split("\n")
    out = []
    for line in listed:
        if not line.strip():
            continue
        _table, family, name = line.split()[:3]
        if name.startswith("kn") or name == "kubenode_firewall" or (only and f"{family} {name}" not in only):
            continue
        out.append(host.run(["nft", "-a", "list", "table", family, name]).stdout)
    return "".join(out)


def table(host, ref: str) -> str:
    proc = host.run(["nft", "-a", "list", "table"] + ref.split(), check=False)
    return proc.stdout if proc.returncode == 0 else ""


def status(run, name, host=None) -> str:
    """changed, ok or failed (a failure under ignore_errors counts as failed)."""
    rec = run.task(name, host)
    if rec["status"] in ("failed", "ignored"):
        return "failed"
    return "changed" if rec["result"].get("changed") else rec["status"]


def generation(host) -> int:
    """The host's nf_tables generation: every committed transaction adds one, a dry run (nft -c) none."""
    return int(host.run([sys.executable, "-c", GETGEN]).stdout)


def state_tasks(label: str) -> list:
    """Tasks that record the host's ruleset and nf_tables generation as "listed <label>", "generation <label>"."""
    return [{"name": f"listed {label}", "ansible.builtin.command": {"argv": ["nft", "list", "ruleset"]}, "changed_when": False},
            {"name": f"generation {label}", "ansible.builtin.command": {"argv": [sys.executable, "-c", GETGEN]},
             "changed_when": False}]


def add_lans(host) -> None:
    """lan1 and then lan0 on the host: lan1 has the lower interface index, unlike the order of their names."""
    for name in ("lan1", "lan0"):
        host.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"])


def supported(host, needs) -> bool:
    """Whether the host's kernel accepts what a corpus entry's `needs` names (nothing needed: yes)."""
    return not needs or host.run(["nft", "-c", "-f", "-"], input=PROBES[needs], check=False).returncode == 0


def listed(run, label: str, host=None) -> dict:
    """The tables of "listed <label>", counters zeroed (packets of the lab's own IPv6 neighbour discovery
    keep moving them); the generation tells whether anything was written."""
    text = run.task(f"listed {label}", host)["result"]["stdout"]
    return {tb: nft.normalise(table) for tb, table in nft.split_listing(text).items()}


def differing(result: dict) -> list:
    """The tables whose before and after differ in a task's diff."""
    diff = result.get("diff") or {}
    before, after = nft.split_listing(diff.get("before", "")), nft.split_listing(diff.get("after", ""))
    return sorted(tb for tb in set(before) | set(after) if nft.compare_key(before.get(tb)) != nft.compare_key(after.get(tb)))


def apply_play(host, *tasks, **play):
    return [dict({"hosts": host, "gather_facts": False, "tasks": list(tasks)}, **play)]


def nft_task(name, **args):
    return {"name": name, MODULE: args, "ignore_errors": True}


def rules(n: int, shuffle: bool = False) -> str:
    body = [f"\t\tip saddr 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255} tcp dport {1000 + i % 50000} counter accept" for i in range(n)]
    if shuffle:
        # same rules, different formatting: spacing, priority spelled as a number, a set's elements reordered
        body = [" ".join(r.split()).replace("counter accept", "counter   accept") for r in body]
        head = "  type filter hook input priority 0 ; policy accept"
        sets = "  set s { type inet_service; elements = { 443, 22, 80 } }"
    else:
        head = "\t\ttype filter hook input priority filter; policy accept;"
        sets = "\tset s {\n\t\ttype inet_service\n\t\telements = { 22, 80, 443 }\n\t}"
    return "table inet knbig {\n" + sets + "\n\tchain input {\n" + head + "\n" + "\n".join(body) + "\n\t}\n}\n"


# ------------------------------------------------------------------ the role, as a new user would


def test_role_worker_opens_10250_not_10251_and_leaves_foreign_tables_alone(netns_pair, playbook, tmp_path):
    """The issue's "Done when", as a new user would try it; h2 is a control-plane node at the same time."""
    lab, inv = netns_pair
    h1, h2 = lab.hosts
    foreign_tables(h1)
    server = listen(h1, [22, 10250, 10251, 10256, 6443, 2379])
    server2 = listen(h2, [6443, 2379, 10250, 10257])
    try:
        assert probe(h2, h1.v4, [10250, 10251]) == {10250: "open", 10251: "open"}
        play = [{
            "hosts": "h1",
            "gather_facts": False,
            "roles": [{"role": "kubenode.dataplane.nftables"}],
            "vars": {
                "nftables_node_role": "worker",
                "nftables_persist_dir": str(tmp_path / "nftables.d"),
                "nftables_persist_conf": str(tmp_path / "nftables.conf"),
                "nftables_persist_service": False,
            },
        }, {
            "hosts": "h2", "gather_facts": False,
            "roles": [{"role": "kubenode.dataplane.nftables"}],
            "vars": {"nftables_node_role": "control_plane", "nftables_persist": False, "nftables_confirm_timeout": 0,
                     # h1 is outside the cluster's nodes: only what is open to anyone answers it
                     "nftables_cluster_cidrs": ["203.0.113.0/24"]},
        }]
        (tmp_path / "nftables.conf").write_text(debian_nftables_conf())
        before = snapshot(h1)
        first = playbook(play, inv)
        assert first.rc == 0, first.explain()
        assert status(first, "kubenode.dataplane.nftables : Apply the node firewall (table inet kubenode_firewall)", "h1") == "changed"
        confirm = first.task("kubenode.dataplane.nftables : Confirm the node firewall (cancels the automatic rollback)", "h1")
        assert confirm["result"]["changed"] and len(confirm["result"]["confirmed"]) == 1, confirm
        assert snapshot(h1) == before, "a foreign table changed"

        # a peer over the veth: the kubelet's port is open, 10251 (nothing in the worker catalogue) is dropped
        seen = probe(h2, h1.v4, [22, 10250, 10251, 10256, 6443, 2379])
        assert seen == {22: "open", 10250: "open", 10251: "filtered", 10256: "open", 6443: "filtered", 2379: "filtered"}
        assert probe(h2, h1.v6, [10250, 10251]) == {10250: "open", 10251: "filtered"}
        assert probe(h1, h2.v4, [6443, 2379, 10250, 10257]) == {6443: "open", 2379: "filtered", 10250: "filtered", 10257: "filtered"}

        before = snapshot(h1)
        owned = table(h1, "inet kubenode_firewall")
        second = playbook(play, inv)
        assert second.rc == 0, second.explain()
        assert second.changed() == 0, second.stdout
        apply_task = second.task("kubenode.dataplane.nftables : Apply the node firewall (table inet kubenode_firewall)", "h1")
        assert apply_task["result"]["canonical_source"] == "cache"
        assert table(h1, "inet kubenode_firewall") == owned, "a no-op run rewrote the owned table"
        assert snapshot(h1) == before, "a foreign table changed"

        persisted = (tmp_path / "nftables.d" / "kubenode-inet-kubenode_firewall.nft").read_text()
        conf = (tmp_path / "nftables.conf").read_text()
        assert "delete table inet kubenode_firewall" in persisted
        assert not [ln for ln in conf.splitlines() if ln.strip() == "flush ruleset"]
        assert f'include "{tmp_path}/nftables.d/kubenode-*.nft"' in conf

        # what boot (or systemctl reload nftables) does with these files leaves the foreign tables alone
        foreign = snapshot(h1, only={"ip kube-proxy", "ip filter"})
        h1.run(["nft", "-f", str(tmp_path / "nftables.conf")])
        assert snapshot(h1, only={"ip kube-proxy", "ip filter"}) == foreign
        assert table(h1, "inet filter"), "the stock table of nftables.conf was not loaded"
        assert probe(h2, h1.v4, [10250, 10251]) == {10250: "open", 10251: "filtered"}
    finally:
        server.kill()
        server2.kill()


# ------------------------------------------------------------------ the module


def test_check_mode_bad_rules_and_foreign_tables_change_nothing(netns_pair, playbook):
    lab, inv = netns_pair
    h1, h2 = lab.hosts
    foreign_tables(h1)
    good = "table inet kngood {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\ttcp dport 7000 counter accept\n\t}\n}\n"
    assert status(playbook(apply_play("h1", nft_task("apply", content=good)), inv), "apply") == "changed"
    server = listen(h1, [7000])
    try:
        assert probe(h2, h1.v4, [7000]) == {7000: "open"}
    finally:
        server.kill()
    kept = table(h1, "inet kngood")
    assert "counter packets 0 bytes 0" not in kept, "the probe should have been counted"
    before = snapshot(h1)
    other = good.replace("7000", "8080")
    bad = good.replace("accept\n\t}", "acept\n\t}")
    # check mode for one task only, as a user would write it; the bad content also runs for real
    plays = apply_play(
        "h1",
        nft_task("again", content=good),
        dict(nft_task("other in check mode", content=other), check_mode=True),
        nft_task("bad", content=bad),
        dict(nft_task("bad in check mode", content=bad), check_mode=True),
        nft_task("kube-proxy", tables=["ip kube-proxy"], state="absent"),
        nft_task("iptables-nft", content="table ip filter {\n\tchain x {\n\t}\n}\n"),
        nft_task("reaching out", tables=["inet mine"], content="table inet mine {\n}\ndelete table ip kube-proxy\n"),
        nft_task("flush", content="flush ruleset\ntable inet mine {\n}\n"),
    )
    run = playbook(plays, inv, diff=True)
    assert status(run, "again") == "ok", run.explain()
    checked = run.task("other in check mode")
    assert checked["result"]["changed"] and "8080" in checked["result"]["diff"]["after"], checked
    for name in ("bad", "bad in check mode"):
        msg = run.task(name)["result"]["msg"]
        assert status(run, name) == "failed", msg
        assert "content:4:" in msg and "syntax error" in msg and "nothing was changed" in msg, msg
    assert "belongs to kube-proxy's nftables mode" in run.task("kube-proxy")["result"]["msg"]
    assert "belongs to iptables-nft" in run.task("iptables-nft")["result"]["msg"]
    assert "ip kube-proxy which tables does not list" in run.task("reaching out")["result"]["msg"]
    assert "content line 1: 'flush ruleset'" in run.task("flush")["result"]["msg"]
    for name in ("kube-proxy", "iptables-nft", "reaching out", "flush"):
        assert status(run, name) == "failed"
    # counters included: the no-op, check mode and every failure left the owned and the foreign tables as they were
    assert table(h1, "inet kngood") == kept
    assert snapshot(h1) == before


def test_idempotent_at_10_and_10000_rules_whatever_the_formatting(netns_pair, playbook):
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    for n in (10, 10000):
        tasks = [
            nft_task("apply", content=rules(n)),
            nft_task("again", content=rules(n)),
            nft_task("reformatted", content=rules(n, shuffle=True)),
            nft_task("without the cache", content=rules(n, shuffle=True), canonical_cache=False),
        ]
        run = playbook(apply_play("h1", *tasks), inv)
        assert run.rc == 0, run.explain()
        assert status(run, "apply") in ("changed", "ok")
        for name in ("again", "reformatted", "without the cache"):
            assert status(run, name) == "ok", (n, name, run.task(name))
        assert run.task("without the cache")["result"]["canonical_source"] == "scratch namespace"
        listed = table(h1, "inet knbig")
        assert listed.count("counter packets") == n


def test_verified_by_a_full_read_once_then_by_the_generation(netns_pair, playbook):
    """A script never applied on this machine is read back in full after its apply, and only then cached; a
    later apply of the same script is verified by the kernel's nf_tables generation (one commit: ours)."""
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    nonce = os.urandom(4).hex()
    content = ("table inet kngen {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n"
               f"\t\ttcp dport 7000 counter accept comment \"{nonce}\"\n\t\tudp dport {{ 53, 123 }} accept\n\t}}\n}}\n")

    start = generation(h1)
    run = playbook(apply_play("h1", nft_task("first", content=content)), inv)
    first = run.task("first")["result"]
    # the table did not exist: no scratch namespace, the apply's read-back is the script's form
    assert first["changed"] and first["canonical_source"] == "applied" and first["verified"] == "re-read", first
    listed = h1.run(["nft", "list", "table", "inet", "kngen"]).stdout
    h1.run(["nft", "delete", "table", "inet", "kngen"])
    run = playbook(apply_play("h1", nft_task("again", content=content), nft_task("no-op", content=content)), inv)
    again = run.task("again")["result"]
    assert again["changed"] and again["canonical_source"] == "cache" and again["verified"] == "generation", again
    assert run.task("no-op")["result"]["changed"] is False and run.task("no-op")["result"]["verified"] is None
    # the same table in the kernel as after the fully verified apply
    assert h1.run(["nft", "list", "table", "inet", "kngen"]).stdout == listed
    # three commits: the two applies and the delete by hand; the no-op committed nothing
    assert generation(h1) - start == 3


def test_two_tasks_on_different_tables_in_parallel_forks(netns_pair, playbook, tmp_path):
    lab, _inv = netns_pair
    h1 = lab.hosts[0]
    # two inventory hosts that are the same namespace, run by two forks at once
    inv = tmp_path / "inventory.yml"
    inv.write_text(json.dumps({"all": {
        "vars": {"ansible_connection": "kubenode.dataplane.netns", "ansible_python_interpreter": sys.executable},
        "hosts": {"a": {"ansible_netns_name": h1.netns, "t": "kna"}, "b": {"ansible_netns_name": h1.netns, "t": "knb"}},
    }}))
    body = "\n".join(f"\t\ttcp dport {p} counter accept" for p in range(1000, 3000))
    content = "table inet {{ t }} {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n" + body + "\n\t}\n}\n"
    run = playbook([{"hosts": "all", "gather_facts": False, "tasks": [{"name": "apply", MODULE: {"content": content}}]}],
                   inv, forks=2)
    assert run.rc == 0, run.explain()
    assert status(run, "apply", "a") == "changed" and status(run, "apply", "b") == "changed"
    assert table(h1, "inet kna").count("counter") == 2000 and table(h1, "inet knb").count("counter") == 2000


def test_rollback_restores_access_the_new_rules_cut(netns_pair, playbook):
    """An established TCP session from the peer (standing in for Ansible's SSH connection) is cut by the new
    rules, then works again, the same session, once the rollback has run by itself; a later confirm says so."""
    lab, inv = netns_pair
    h1, h2 = lab.hosts
    server = listen(h1, [7022])
    client = subprocess.Popen(["ip", "netns", "exec", h2.netns, sys.executable, TRAFFIC, "session", h1.v4, "7022"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "connected"

        def say(msg, wait=1.0):
            client.stdin.write(f"{msg} {wait}\n")
            client.stdin.flush()
            return client.stdout.readline().strip()

        assert say("hello") == "hello"
        lockout = (f"table inet knlock {{\n\tchain input {{\n\t\ttype filter hook input priority -300; policy accept;\n"
                   f"\t\tip saddr {h2.v4} drop\n\t}}\n}}\n")
        run = playbook(apply_play("h1", nft_task("lock out", content=lockout, confirm_timeout=4)), inv)
        applied = run.task("lock out")
        assert applied["result"]["changed"], run.explain()
        assert applied["result"]["rollback"]["mechanism"] == "detached process"
        armed = time.monotonic()
        assert say("cut", 1.0) == "timeout"
        assert probe(h2, h1.v4, [7022]) == {7022: "filtered"}
        # TCP retransmits what was sent while cut: the same session answers once the rules are gone
        assert say("back", 15.0).endswith("back")
        assert time.monotonic() - armed >= 3.0
        assert table(h1, "inet knlock") == ""
        assert probe(h2, h1.v4, [7022]) == {7022: "open"}
        run = playbook(apply_play("h1", nft_task("confirm too late", tables=["inet knlock"], confirm=True)), inv)
        late = run.task("confirm too late")
        assert status(run, "confirm too late") == "failed" and "the rollback ran" in late["result"]["msg"], late

        # confirmed in time: the rules stay after the timeout
        keep = lockout.replace(f"ip saddr {h2.v4} drop", "tcp dport 9 drop")
        run = playbook(apply_play("h1", nft_task("apply", content=keep, confirm_timeout=3),
                                  nft_task("confirm", tables=["inet knlock"], confirm=True)), inv)
        assert status(run, "apply") == "changed" and status(run, "confirm") == "changed", run.explain()
        time.sleep(4)
        assert "tcp dport 9 drop" in table(h1, "inet knlock")
        assert say("still", 2.0) == "still"
    finally:
        client.kill()
        server.kill()


def test_structured_ruleset_and_its_schema_errors(netns_pair, playbook):
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    ruleset = [{
        "family": "inet", "name": "knedge",
        "sets": [{"name": "blocked", "type": "ipv4_addr", "flags": ["interval"], "elements": ["203.0.113.0/24", "198.51.100.7"]}],
        "maps": [{"name": "ports", "type": "inet_service", "value": "verdict",
                  "elements": [{"key": 8080, "value": "drop"}, {"key": 22, "value": "accept"}]}],
        "counters": [{"name": "dropped"}],
        "chains": [{"name": "input", "type": "filter", "hook": "input", "priority": "filter", "policy": "accept",
                    "rules": ["ip saddr @blocked counter name dropped drop", {"rule": "tcp dport vmap @ports", "comment": "by port"}]}],
    }]
    broken = [{"family": "inet6", "name": "knedge", "chains": [{"name": "input", "hook": "inptu", "policy": "maybe"}]}]
    # interfaces named in a script need stand-ins in the scratch namespace; on the host they must exist
    with_iif = ('table inet knif {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n'
                '\t\tiif "eth0" tcp dport 22 accept\n\t\tiif "lo" accept\n\t}\n}\n')
    run = playbook(apply_play("h1", nft_task("apply", ruleset=ruleset), nft_task("again", ruleset=ruleset),
                              nft_task("broken", ruleset=broken),
                              nft_task("iif", content=with_iif), nft_task("iif again", content=with_iif, canonical_cache=False),
                              nft_task("iif missing", content=with_iif.replace('"eth0"', '"nosuch0"'))), inv)
    assert status(run, "apply") == "changed" and status(run, "again") == "ok", run.explain()
    listed = table(h1, "inet knedge")
    assert "elements = { 22 : accept, 8080 : drop }" in listed and 'comment "by port"' in listed
    failed = run.task("broken")["result"]
    problems = failed["problems"]
    assert any(p.startswith("$.ruleset[0].family:") for p in problems), problems
    assert any(p.startswith("$.ruleset[0].chains[0].hook:") for p in problems), problems
    assert any(p.startswith("$.ruleset[0].chains[0].policy:") for p in problems), problems
    assert any("$.ruleset[0].chains[0]" in p and "'type' is a dependency of 'hook'" in p for p in problems), problems
    assert status(run, "iif") == "changed" and status(run, "iif again") == "ok", run.explain()
    # the interface exists in the scratch namespace but not on the host: nft -f in the host's namespace says so,
    # and its transaction commits nothing
    msg = run.task("iif missing")["result"]["msg"]
    assert "nothing was changed" in msg and "Interface does not exist" in msg and "content:4:" in msg, msg
    assert "nosuch0" not in table(h1, "inet knif")
    assert [n for n in os.listdir("/run/netns") if n.startswith("kubenode-scratch-")] == []


# ------------------------------------------------------------------ the kernel's forms, learnt right


def test_interface_names_in_concatenations_vmaps_and_sets_of_every_family(netns_pair, playbook):
    """Interfaces in concatenations (iif . oif), vmaps and sets, in every family nft accepts them, loaded
    without the canonical cache: the scratch namespace gets a stand-in for exactly the names nft asks for
    (never '.', a set's name or a comment's words), with the host's interface index, so the kernel lists
    the elements in the host's order."""
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    add_lans(h1)
    content = "".join(e["nft"] for e in CORPUS if e["name"].startswith("iface-"))
    tables = nft.tables_named(content)
    assert {tb.split()[0] for tb in tables} == set(nft.FAMILIES)
    runs = (("first", False), ("second", False), ("check", True))
    tasks = []
    for name, check in runs:
        tasks += [dict(nft_task(name, content=content, canonical_cache=False), check_mode=check, diff=True)] + state_tasks(name)
    run = playbook(apply_play("h1", *tasks), inv)
    assert run.rc == 0, run.explain()
    assert status(run, "first") == "changed", run.task("first")
    for name in ("second", "check"):
        result = run.task(name)["result"]
        assert status(run, name) == "ok", (name, differing(result), result.get("msg"))
        assert result["canonical_source"] == "scratch namespace"
    first = listed(run, "first")
    assert set(first) == set(tables)
    # lan1 has the lower index: the kernel's order, not the script's
    assert 'elements = { "lan1", "lan0" }' in first["netdev knc_if_netdev"]
    for name in ("second", "check"):
        assert listed(run, name) == first, name
        assert run.task(f"generation {name}")["result"]["stdout"] == run.task("generation first")["result"]["stdout"]


CORPUS_PHASES = (  # name, check mode, canonical_cache
    ("apply", False, False),
    ("check without the cache", True, False),
    ("again", False, False),
    # a no-op with the cache stores the form it compared with, which the check after it reads back
    ("again with the cache", False, True),
    ("check with the cache", True, True),
)
CORPUS_GROUP = 40  # entries per task, one module run per entry would take minutes; two hosts at once


def test_corpus_check_mode_agrees_with_the_real_run(netns_pair, playbook):
    """Every table of nft_corpus.yml, applied, then run again in check mode and for real: nothing to change.

    A check mode that says changed where the real run says unchanged (or the reverse) means the scratch
    namespace's form of a table is not the live kernel's; a failure names the tables that differ.
    """
    lab, inv = netns_pair
    for host in lab.hosts:
        add_lans(host)
    entries = [e for e in CORPUS if supported(lab.hosts[0], e.get("needs"))]
    assert len(entries) >= 150
    groups = [entries[i:i + CORPUS_GROUP] for i in range(0, len(entries), CORPUS_GROUP)]
    # half of the groups on each host (fewer tables to list per nft run), both hosts at once
    on = {h.name: groups[k::len(lab.hosts)] for k, h in enumerate(lab.hosts)}
    scripts = {name: ["".join(e["nft"] for e in group) for group in mine] for name, mine in on.items()}
    tasks = []
    for phase, check, cache in CORPUS_PHASES:
        for n in range(max(len(mine) for mine in on.values())):
            task = nft_task(f"{phase} {n}", content=f"{{{{ corpus[inventory_hostname][{n}] }}}}", canonical_cache=cache)
            tasks.append(dict(task, check_mode=check, diff=True, when=f"corpus[inventory_hostname] | length > {n}"))
        tasks += state_tasks(phase)
    run = playbook([{"hosts": "all", "gather_facts": False, "vars": {"corpus": scripts}, "tasks": tasks}], inv, forks=2)
    assert run.rc == 0, run.explain()
    problems = []
    for phase, _check, _cache in CORPUS_PHASES:
        wanted = "changed" if phase == "apply" else "ok"
        for host, mine in on.items():
            for n, group in enumerate(mine):
                result = run.task(f"{phase} {n}", host)["result"]
                found = status(run, f"{phase} {n}", host)
                if found != wanted:
                    what = differing(result) or [e["name"] for e in group]
                    problems.append(f"{host}, {phase}: {found} for {', '.join(what)}: {result.get('msg', '')}")
    assert problems == [], "\n".join(problems)
    # the runs after the first wrote nothing: the same tables, and not one more committed transaction
    for host, mine in on.items():
        first = listed(run, "apply", host)
        assert len(first) == sum(len(nft.tables_named(e["nft"])) for group in mine for e in group)
        for phase, _check, _cache in CORPUS_PHASES[1:]:
            assert listed(run, phase, host) == first, (host, phase)
            generation_after = run.task(f"generation {phase}", host)["result"]["stdout"]
            assert generation_after == run.task("generation apply", host)["result"]["stdout"], (host, phase)
