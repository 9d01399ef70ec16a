"""kubenode.dataplane.iptables_backend on netns hosts: a mixed node is detected, a switch that
would strand rules is refused, migrate moves the collection's own chains.

update-alternatives acts on the file system, which the namespaces share with this machine: every
task here passes a private --altdir/--admindir (module options alternatives_altdir and
alternatives_admindir) set up in a temporary folder, and the test checks that the machine's own
selection is the same afterwards."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.netns.iptables_lab import chain_lines, save, seed_foreign, tool

pytestmark = pytest.mark.netns

MODULE = "kubenode.dataplane.iptables_backend"


def private_alternatives(root: Path) -> dict:
    """An alternatives system of its own, with iptables-nft (20) and iptables-legacy (10) like Debian's."""
    alt, admin, sbin = root / "alt", root / "admin", root / "sbin"
    for d in (alt, admin, sbin):
        d.mkdir(parents=True)
    base = ["update-alternatives", "--altdir", str(alt), "--admindir", str(admin), "--log", str(admin / "log")]
    for cmd in ("iptables", "ip6tables"):
        for variant, prio in (("nft", "20"), ("legacy", "10")):
            subprocess.run(base + ["--install", str(sbin / cmd), cmd, f"/usr/sbin/{cmd}-{variant}", prio,
                                   "--slave", str(sbin / f"{cmd}-restore"), f"{cmd}-restore", f"/usr/sbin/{cmd}-{variant}-restore",
                                   "--slave", str(sbin / f"{cmd}-save"), f"{cmd}-save", f"/usr/sbin/{cmd}-{variant}-save"],
                           check=True, capture_output=True)
    return {"alternatives_altdir": str(alt), "alternatives_admindir": str(admin)}


def seed_legacy(host) -> None:
    host.run([tool("legacy", "ipv4", "-restore"), "-w", "5", "--noflush"], input="\n".join([
        "*filter", ":DOCKER - [0:0]", ":KUBENODE-FIREWALL - [0:0]",
        "-A INPUT -j KUBENODE-FIREWALL", "-A FORWARD -o docker0 -j DOCKER",
        "-A KUBENODE-FIREWALL -p tcp -m tcp --dport 22 -j ACCEPT", "-A KUBENODE-FIREWALL -j DROP", "COMMIT", ""]))


def test_mixed_node_refusal_and_migration(netns_pair, playbook, tmp_path):
    lab, inv = netns_pair
    h1, h2 = lab.hosts
    host_selection = {c: os.readlink(f"/etc/alternatives/{c}") for c in ("iptables", "ip6tables")}
    dirs = private_alternatives(tmp_path / "alternatives")
    altdir = Path(dirs["alternatives_altdir"])
    seed_foreign(h1, "nft")   # kube-proxy and kubelet (hint chain) in nft
    seed_legacy(h1)           # Docker and the collection's chain in legacy: a mixed node
    legacy_before = save(h1, "legacy")

    run = playbook([{"hosts": "h1", "gather_facts": False, "tasks": [
        {"name": "report", MODULE: dirs},
        {"name": "switch to legacy", MODULE: dict(dirs, backend="legacy"), "ignore_errors": True},
        {"name": "migrate in check mode", MODULE: dict(dirs, backend="nft", migrate=True), "check_mode": True},
        {"name": "migrate", MODULE: dict(dirs, backend="nft", migrate=True)},
        {"name": "migrate again", MODULE: dict(dirs, backend="nft", migrate=True)},
    ]}, {"hosts": "h2", "gather_facts": False, "tasks": [
        {"name": "switch an empty node", MODULE: dict(dirs, backend="legacy")},
        {"name": "switch an empty node again", MODULE: dict(dirs, backend="legacy")},
        {"name": "switch back in check mode", MODULE: dict(dirs, backend="nft"), "check_mode": True},
    ]}], inv)
    assert run.rc == 0, run.explain()

    report = run.task("report")["result"]
    assert report["changed"] is False
    assert report["mixed"] is True and report["rules_in"] == ["legacy", "nft"]
    assert report["kubelet_hint"] == ["nft"] and report["detected"] == "nft"
    assert report["selected"] == "nft"
    assert report["backends"]["legacy"]["ipv4"]["filter"]["chains"] == ["DOCKER", "KUBENODE-FIREWALL"]
    assert "KUBE-SERVICES" in report["backends"]["nft"]["ipv4"]["nat"]["chains"]
    assert any("both iptables backends hold rules" in w for w in report.get("warnings", []))

    refused = run.task("switch to legacy")
    assert refused["status"] == "ignored"
    assert refused["result"]["msg"].startswith("refusing to switch the iptables command from nft to legacy: the nft "
                                               "backend still holds rules (")
    assert refused["result"]["msg"].endswith("nothing was changed")

    check = run.task("migrate in check mode")["result"]
    assert check["changed"] is True and check["migrated"] == ["ipv4 filter KUBENODE-FIREWALL"]
    migrated = run.task("migrate")["result"]
    assert migrated["changed"] is True and migrated["migrated"] == ["ipv4 filter KUBENODE-FIREWALL"]
    assert migrated["left_behind"] == {"ipv4": {"filter": {"chains": ["DOCKER"], "rules": 1, "policies": {}}}}
    assert run.task("migrate again")["result"]["changed"] is False

    # the chain and its jump moved; Docker's chain stayed where it was, byte for byte
    nft = save(h1, "nft")
    assert chain_lines(nft, "KUBENODE-FIREWALL") == ["-A KUBENODE-FIREWALL -p tcp -m tcp --dport 22 -j ACCEPT",
                                                     "-A KUBENODE-FIREWALL -j DROP"]
    assert [ln for ln in nft.splitlines() if ln.startswith("-A INPUT")][0] == "-A INPUT -j KUBENODE-FIREWALL"
    legacy = save(h1, "legacy")
    assert "KUBENODE" not in legacy
    assert [ln for ln in legacy.splitlines() if "DOCKER" in ln] == [ln for ln in legacy_before.splitlines() if "DOCKER" in ln]

    switched = run.task("switch an empty node")["result"]
    assert switched["changed"] is True and switched["selected"] == "legacy"
    assert run.task("switch an empty node again")["result"]["changed"] is False
    assert run.task("switch back in check mode")["result"]["changed"] is True
    # the private selection moved (and check mode left it); the machine's own did not
    assert os.readlink(altdir / "iptables") == "/usr/sbin/iptables-legacy"
    assert os.readlink(altdir / "ip6tables") == "/usr/sbin/ip6tables-legacy"
    assert {c: os.readlink(f"/etc/alternatives/{c}") for c in ("iptables", "ip6tables")} == host_selection
