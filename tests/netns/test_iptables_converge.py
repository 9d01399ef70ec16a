"""iptables_ruleset converges on the first run for every rule iptables accepts, in the kernel's words.

The printed form of rules never seen before comes from a scratch network namespace, so the rules people write
every day (defaults left out, service names, masks, several addresses) apply once and are then unchanged;
check mode on a host that never saw them predicts exactly what the real run leaves; rules iptables rejects
change nothing. Real iptables of both backends, on netns hosts.
"""

from __future__ import annotations

import os
import stat
import sys

import pytest

from tests.netns.iptables_lab import chain_lines, foreign_part, save, seed_foreign, strip_counters

pytestmark = pytest.mark.netns

MODULE = "kubenode.dataplane.iptables_ruleset"

# the forms a new user tried first, each of which used to apply and then fail
QUOTED = [
    "-p tcp --dport 22 -m recent --set --name SSH",
    "-p tcp --dport 22 -m recent --update --seconds 60 --hitcount 4 --rttl --name SSH -j DROP",
    "-p tcp --syn -m connlimit --connlimit-above 10 -j REJECT",
    # written "-m ah --ahspi 3:" in the report, which iptables itself refuses (the kernel's ah match wants -p ah)
    "-p ah -m ah --ahspi 3: -j ACCEPT",
    "-i + -p tcp -j ACCEPT",
    "-c 2,3 -j RETURN",
]
QUOTED_V6 = ["-p mh -m mh --mh-type 3:", "-p icmpv6 --icmpv6-type echo-request -j ACCEPT"]

# a node firewall of everyday rules, written the way people write them
EVERYDAY = [
    "-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    "-m conntrack --ctstate INVALID -j DROP",
    "-m state --state NEW -p tcp --dport 22 -j ACCEPT",
    "-i lo -j ACCEPT",
    "-p tcp -m multiport --dports 80,443,8080:8090 -j ACCEPT",
    "-p udp -m multiport --sports 53,123 -j ACCEPT",
    "-p tcp --dport ssh -m recent --set --name SSH --rsource",
    "-p tcp --dport ssh -m recent --update --seconds 60 --hitcount 4 --name SSH -j DROP",
    "-p tcp --syn --dport 443 -m connlimit --connlimit-above 100 --connlimit-mask 24 -j REJECT --reject-with tcp-reset",
    "-p icmp --icmp-type echo-request -m limit --limit 5/second --limit-burst 10 -j ACCEPT",
    "-p icmp --icmp-type echo-request -j DROP",
    "-p icmp --icmp-type destination-unreachable -j ACCEPT",
    "-p icmp --icmp-type time-exceeded -j ACCEPT",
    "-p tcp --dport 6443 -m hashlimit --hashlimit-upto 50/sec --hashlimit-burst 100 --hashlimit-mode srcip "
    "--hashlimit-name apiserver -j ACCEPT",
    '-p tcp --dport 10250 -s 10.0.0.0/8 -m comment --comment "kubelet from the nodes" -j ACCEPT',
    "-p tcp --dport 2379:2380 -s 10.0.0.0/8,192.168.0.0/16 -j ACCEPT",
    "-m addrtype --dst-type BROADCAST -j DROP",
    "-m addrtype --dst-type MULTICAST -j DROP",
    "-p udp --dport 8472 -m comment --comment 'flannel vxlan' -j ACCEPT",
    "-p udp --dport 4789 -j ACCEPT",
    "-p udp --dport 51820:51821 -j ACCEPT",
    "-p tcp --dport 179 -j ACCEPT",
    "-p 4 -j ACCEPT",
    "-p tcp --tcp-flags ALL NONE -j DROP",
    "-p tcp --tcp-flags SYN,FIN SYN,FIN -j DROP",
    "-p tcp ! --syn -m conntrack --ctstate NEW -j DROP",
    "-m pkttype --pkt-type broadcast -j DROP",
    "-p tcp --dport 30000:32767 -j ACCEPT",
    "-p udp --dport 30000:32767 -j ACCEPT",
    "-s 192.0.2.0/24 -j DROP",
    "! -s 10.0.0.0/8 -p tcp --dport 10255 -j DROP",
    "-m iprange --src-range 198.51.100.10-198.51.100.20 -j ACCEPT",
    "-m mac --mac-source 00:11:22:33:44:55 -j ACCEPT",
    "-m mark --mark 0x4000/0x4000 -j ACCEPT",
    "-m connmark --mark 0x1 -j ACCEPT",
    "-p icmp -m length --length 1400:65535 -j DROP",
    "-m ttl --ttl-lt 2 -j DROP",
    '-p tcp --dport 9100 -m conntrack --ctstate NEW -m limit --limit 10/min -j LOG --log-prefix "node-exporter: " '
    "--log-level info",
    "-p tcp --dport 9100 -j ACCEPT",
    "-m limit --limit 3/min -j LOG --log-prefix 'KUBENODE drop: ' --log-level 4 --log-tcp-options --log-ip-options",
    "-p tcp --dport 23 -j REJECT --reject-with icmp-port-unreachable",
    "-p udp --dport 69 -j REJECT --reject-with icmp-host-prohibited",
    "-p tcp --dport 25 -j REJECT",
    '-p tcp --dport 80 -m string --string "GET /admin" --algo bm -j DROP',
    "-p tcp --dport 2222 -m time --timestart 01:00 --timestop 03:00 -j ACCEPT",
    "-m statistic --mode random --probability 0.01 -j LOG --log-prefix 'sample '",
    '-p tcp -m tcp --dport 5000 -m comment --comment "already as iptables-save prints it" -j ACCEPT',
    "-p udp --dport domain -m comment --comment dns -j ACCEPT",
    "-m conntrack --ctstate NEW -m recent --rcheck --seconds 30 --name PORTSCAN -j DROP",
    "-j REJECT --reject-with icmp-admin-prohibited",
]
NAT_PRE = [
    "-p tcp --dport 8443 -j DNAT --to-destination 10.0.0.10:443",
    "-d 203.0.113.5 -p udp --dport 53 -j DNAT --to-destination 10.0.0.53",
    "-p tcp --dport 8080 -j REDIRECT --to-ports 80",
    "-d 203.0.113.0/24 -j NETMAP --to 1.2.3.4",
]
NAT_POST = [
    "-s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE",
    "-p tcp -s 172.17.0.0/16 -j MASQUERADE --to-ports 1024-65535",
    "-s 10.10.0.0/24 -j SNAT --to-source 198.51.100.1",
    "-s 10.11.0.0/24 -j SNAT --to-source 198.51.100.1-198.51.100.5 --random",
]

CHAINS = [
    {"chain": "KUBENODE-FW", "jump_from": ["INPUT"], "jump_spec": "-m comment --comment 'node firewall'",
     "rules": EVERYDAY},
    {"chain": "KUBENODE-QUOTED", "jump_from": ["INPUT"], "jump_position": -1, "rules": QUOTED},
    {"chain": "KUBENODE-V6", "ip_version": "ipv6", "jump_from": ["INPUT"], "rules": QUOTED_V6},
    {"chain": "KUBENODE-PRE", "table": "nat", "jump_from": ["PREROUTING"], "rules": NAT_PRE},
    {"chain": "KUBENODE-POST", "table": "nat", "jump_from": ["POSTROUTING"], "rules": NAT_POST},
]


def play(tasks: list, hosts: str = "h1", **extra) -> list:
    return [dict({"name": "converge", "hosts": hosts, "gather_facts": False, "tasks": tasks}, **extra)]


def task(name: str, args: dict, **extra) -> dict:
    return {"name": name, MODULE: args, **extra}


def owned(host, backend: str) -> dict[str, list[str]]:
    """The owned chains and the built-in chains' jumps into them, as iptables-save prints them now."""
    out = {}
    for family in ("ipv4", "ipv6"):
        text = save(host, backend, family)
        for c in CHAINS:
            if c.get("ip_version", "ipv4") == family:
                out[f"{family} {c['chain']}"] = chain_lines(text, c["chain"])
        out[f"{family} jumps"] = [ln for ln in text.splitlines() if ln.startswith("-A ") and " -j KUBENODE-" in ln
                                  and ln.split()[1] in ("INPUT", "PREROUTING", "POSTROUTING")]
    return out


def rules_and_counters(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not (ln.startswith(":") and " - " not in ln)]


def predicted(diff_after: str) -> dict[str, list[str]]:
    """The same, from the diff of a check-mode run: the module's prediction in the kernel's words."""
    out: dict[str, list[str]] = {}
    family = ""
    for line in diff_after.splitlines():
        if line.startswith("# ipv"):
            family = line.split()[1]
        elif line.startswith("-A "):
            out.setdefault(f"{family} {line.split()[1]}", []).append(line)
        elif line.startswith("-I "):
            out.setdefault(f"{family} jumps", []).append(line)
    return out


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_everyday_rules_apply_on_the_first_run_and_check_mode_predicts_them(backend, netns_pair, playbook):
    lab, inv = netns_pair
    h1, h2 = lab.hosts
    for h in (h1, h2):
        seed_foreign(h, backend)
    # (legacy's iptables-save prints the policy counters, which count the host's own packets)
    foreign = {f: strip_counters(foreign_part(save(h1, backend, f))) for f in ("ipv4", "ipv6")}
    args = {"backend": backend, "chains": CHAINS, "canonical_cache": False}
    run = playbook(play([
        task("check mode where the rules were never seen", args, check_mode=True, diff=True),
    ], hosts="h2") + play([
        task("first run", args),
        task("second run", args),
        task("check mode", args, check_mode=True, diff=True),
        task("with the cache", dict(args, canonical_cache=True)),
        task("from the cache", dict(args, canonical_cache=True)),
    ]), inv)
    assert run.rc == 0, run.explain()
    first = run.task("first run")["result"]
    assert first["changed"] is True and first["scratch_namespace"] == "used", first
    assert {c["canonical_source"] for c in first["chains"]} == {"scratch namespace"}
    for name in ("second run", "check mode", "with the cache", "from the cache"):
        assert run.task(name)["result"]["changed"] is False, (name, run.task(name)["result"])
    assert {c["canonical_source"] for c in run.task("from the cache")["result"]["chains"]} == {"cache"}
    assert run.task("second run")["result"]["scratch_namespace"] == "used"

    # what the kernel holds is what iptables itself makes of the rules as written
    now = owned(h1, backend)
    assert len(now["ipv4 KUBENODE-FW"]) == len(EVERYDAY) + 1  # two source networks make two rules
    assert "-A KUBENODE-FW -m connlimit" not in "\n".join(now["ipv4 KUBENODE-FW"])  # -p tcp --syn comes first
    assert any("--connlimit-mask 32 --connlimit-saddr" in r for r in now["ipv4 KUBENODE-QUOTED"])
    assert now["ipv4 jumps"][0] == '-A INPUT -m comment --comment "node firewall" -j KUBENODE-FW'
    # the prediction on a host that never saw the rules, in the kernel's words, is what the real run left
    guess = run.task("check mode where the rules were never seen", host="h2")["result"]
    assert guess["changed"] is True
    wanted = predicted(guess["diff"]["after"])
    for key, lines in now.items():
        if key.endswith("jumps"):
            assert sorted(ln.split(" ", 3)[3] for ln in wanted[key]) == sorted(ln.split(" ", 2)[2] for ln in lines)
        else:
            assert wanted[key] == lines, key
    # counters given with -c are the rule's; nobody else's rules moved
    assert "[2:3] -A KUBENODE-QUOTED -j RETURN" in save(h1, backend, counters=True)
    for family in ("ipv4", "ipv6"):
        assert strip_counters(foreign_part(save(h1, backend, family))) == foreign[family]
    assert owned(h2, backend) == {k: [] for k in now}


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_rules_iptables_rejects_change_nothing(backend, netns_pair, playbook):
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    seed_foreign(h1, backend)
    good = [{"chain": "KUBENODE-OK", "jump_from": ["INPUT"], "rules": ["-p tcp --dport 22 -j ACCEPT"]}]
    assert playbook(play([task("good", {"backend": backend, "chains": good})]), inv).rc == 0
    snap = save(h1, backend, counters=True)
    bad = {
        "! -p 0": dict(good[0], rules=["-p tcp --dport 22 -j ACCEPT", "! -p 0 -j ACCEPT"]),
        "two DNAT ranges": {"chain": "KUBENODE-DNAT", "table": "nat", "jump_from": ["PREROUTING"], "rules": [
            "-p tcp -j DNAT --to-destination 1.1.1.1-1.1.1.10:1025-65535 --to-destination 2.2.2.2-2.2.2.20:1025-65535"]},
        "MASQUERADE before routing": {"chain": "KUBENODE-MASQ", "table": "nat", "jump_from": ["PREROUTING"],
                                      "rules": ["-j MASQUERADE"]},
        "a port out of range": dict(good[0], rules=["-p tcp --dport 70000 -j ACCEPT"]),
    }
    tasks = []
    for name, chain in bad.items():
        tasks.append(task(name, {"backend": backend, "chains": [chain]}, ignore_errors=True))
        tasks.append(task(f"{name} in check mode", {"backend": backend, "chains": [chain]}, ignore_errors=True,
                          check_mode=True))
    run = playbook(play(tasks), inv)
    assert run.rc == 0, run.explain()
    for name, chain in bad.items():
        for variant in (name, f"{name} in check mode"):
            res = run.task(variant)
            assert res["status"] == "ignored", (variant, res)
            msg = res["result"]["msg"]
            table = chain.get("table", "filter")
            assert msg.startswith(f"iptables-restore rejected the ipv4 {table} table at "), msg
            assert msg.endswith("; nothing was changed"), msg
            if backend == "legacy" and name == "MASQUERADE before routing":
                # the legacy kernel checks the hooks when the whole table is committed, and says no more
                assert " at 'COMMIT' (the kernel refused the table as a whole" in msg, msg
            else:
                assert "$.chains[0]" in msg, msg
    assert "($.chains[0].rules[1])" in run.task("! -p 0")["result"]["msg"]
    # byte-identical rules and rule counters (a built-in chain's policy counter counts the host's own packets)
    assert rules_and_counters(save(h1, backend, counters=True)) == rules_and_counters(snap)


def test_without_a_scratch_namespace_the_kernel_spelling_is_taken(netns_pair, playbook, tmp_path):
    """Where no namespace can be made (no CAP_SYS_ADMIN, as in an unprivileged container), the normaliser
    predicts; a prediction the kernel spells otherwise is taken from the kernel after the apply, never
    applied and then failed, and the next run finds nothing to change."""
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    python = tmp_path / "python-without-cap-sys-admin"
    python.write_text(f"#!/bin/sh\nexec setpriv --bounding-set -sys_admin {os.path.realpath(sys.executable)} \"$@\"\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    nonce = os.urandom(3).hex()
    # spellings the normaliser does not know: the connlimit mask and recent's defaults
    chains = [{"chain": "KUBENODE-NOSCRATCH", "jump_from": ["INPUT"], "rules": [
        f"-m comment --comment {nonce} -p tcp --syn -m connlimit --connlimit-above 10 --connlimit-saddr -j REJECT",
        "-p tcp --dport 22 -m recent --update --rttl --name SSH -j DROP",
        "-p tcp --dport 22 -j ACCEPT"]}]
    args = {"backend": "nft", "chains": chains}
    run = playbook(play([
        task("first", args),
        task("second", args),
        task("check mode", args, check_mode=True),
    ], vars={"ansible_python_interpreter": str(python)}), inv)
    assert run.rc == 0, run.explain()
    first = run.task("first")["result"]
    assert first["changed"] is True, first
    assert first["scratch_namespace"].startswith("a scratch network namespace (ip netns add) was refused"), first
    assert {c["canonical_source"] for c in first["chains"]} == {"normaliser"}
    assert run.task("second")["result"]["changed"] is False
    assert run.task("check mode")["result"]["changed"] is False
    printed = chain_lines(save(h1, "nft"), "KUBENODE-NOSCRATCH")
    assert len(printed) == 3 and "--connlimit-mask 32" in printed[0], printed


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_rules_naming_ipsets_converge(backend, netns_pair, playbook):
    """ipsets belong to a network namespace: the scratch namespace gets empty copies of the sets the rules name."""
    lab, inv = netns_pair
    h1 = lab.hosts[0]
    h1.run(["ipset", "create", "kn-allow", "hash:net", "family", "inet"])
    h1.run(["ipset", "add", "kn-allow", "10.0.0.0/8"])
    h1.run(["ipset", "create", "kn-pairs", "hash:ip,port"])
    chains = [{"chain": "KUBENODE-SETS", "jump_from": ["INPUT"], "rules": [
        "-m set --match-set kn-allow src -j ACCEPT",
        "-p tcp -m set ! --match-set kn-pairs src,dst -j SET --add-set kn-pairs src,dst",
        "-m set --match-set kn-allow src,src --return-nomatch -j RETURN"]}]
    args = {"backend": backend, "chains": chains, "canonical_cache": False}
    run = playbook(play([task("first", args), task("second", args), task("check", args, check_mode=True)]), inv)
    assert run.rc == 0, run.explain()
    assert [run.task(n)["result"]["changed"] for n in ("first", "second", "check")] == [True, False, False]
    printed = chain_lines(save(h1, backend), "KUBENODE-SETS")
    assert printed[0] == "-A KUBENODE-SETS -m set --match-set kn-allow src -j ACCEPT", printed
    # the live set kept its member; the stand-in was the scratch namespace's alone
    assert "add kn-allow 10.0.0.0/8" in h1.run(["ipset", "save", "kn-allow"]).stdout
