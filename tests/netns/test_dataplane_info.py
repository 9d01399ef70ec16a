"""dataplane_info and the doctor playbook against netns hosts with real rules on this machine's kernel.

h1 is a bare host (no Kubernetes), h2 looks like a kube-proxy iptables-mode node on the nft backend
with Calico's chains and interfaces, h3 is that node plus another program's rules in the legacy
backend. The rules are loaded with the real iptables-*-restore (see dataplane_info_scenarios.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ansible_run
from tests.netns import dataplane_info_scenarios as scenarios

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
DOCTOR = ROOT / "playbooks" / "doctor.yml"
INFO_PLAY = [{
    "name": "read the dataplane",
    "hosts": "all",
    "gather_facts": False,
    "tasks": [
        {"name": "dataplane_info",
         "kubenode.dataplane.dataplane_info": {"extra_sysctls": ["net.ipv4.conf.all.rp_filter"]}},
        {"name": "bad metrics address", "kubenode.dataplane.dataplane_info": {"metrics_address": "localhost"},
         "ignore_errors": True},
        {"name": "bad sysctl name", "kubenode.dataplane.dataplane_info": {"extra_sysctls": ["net.//.x"]},
         "ignore_errors": True},
    ],
}]


def build(host, scenario: str) -> None:
    scenarios.SCENARIOS[scenario](lambda argv, input=None: host.run(argv, input=input))


def saved(host) -> str:
    """Both backends' rules, without the dump's time stamps and the built-in chains' packet counters,
    which move with any packet in the namespace (dataplane_info's own connection attempt to
    127.0.0.1:10249 is two: SYN and RST)."""
    out = host.run(["iptables-nft-save"]).stdout + host.run(["iptables-legacy-save"]).stdout
    return "\n".join(re.sub(r" \[\d+:\d+\]$", "", line) for line in out.splitlines() if not line.startswith("#"))


@pytest.fixture(scope="module")
def nodes(netns_lab):
    lab, inventory = netns_lab
    h1, h2, h3 = lab.hosts
    build(h1, "bare")
    build(h2, "kube-iptables-calico")
    build(h3, "mixed")
    return lab, inventory


@pytest.fixture(scope="module")
def info(nodes):
    lab, inventory = nodes
    before = {h.name: saved(h) for h in lab.hosts}
    run = ansible_run.playbook(INFO_PLAY, inventory, check=True)
    assert run.rc == 0, run.explain()
    # read only: both backends' tables, chains, rules and policies are untouched
    assert {h.name: saved(h) for h in lab.hosts} == before
    results = {h.name: run.task("dataplane_info", h.name)["result"] for h in lab.hosts}
    results["refusals"] = [run.task("bad metrics address", "h1"), run.task("bad sysctl name", "h1")]
    return results


def test_bad_input_is_refused_in_one_sentence_naming_the_option(info):
    address, sysctl = info["refusals"]
    assert address["status"] == "ignored" and sysctl["status"] == "ignored"
    assert address["result"]["msg"] == "metrics_address 'localhost' is not host:port; nothing was read"
    assert sysctl["result"]["msg"] == ("extra_sysctls[0] 'net.//.x' is not a sysctl name such as net.ipv4.ip_forward; "
                                       "nothing was read")


def h1_rp_filter(nodes) -> str:
    return nodes[0].hosts[0].run(["cat", "/proc/sys/net/ipv4/conf/all/rp_filter"]).stdout.strip()


def test_bare_host_gives_a_sane_report_and_no_warnings(info, nodes):
    report = info["h1"]
    assert report["changed"] is False
    assert report["findings"] == []
    assert report["unavailable"] == []
    assert report["kernel"]["features"]["ip_vs"] == "missing"
    assert report["kernel"]["config"]["CONFIG_MODULES"] == "n"
    assert report["iptables"]["backend"] is None and report["iptables"]["in_use"] == []
    assert report["iptables"]["default_backend"] == "nft"
    assert report["nftables"] == {"available": True, "tables": [], "owners": {}}
    assert report["ipvs"]["available"] is False and report["ipvs"]["kube_ipvs0"]["present"] is False
    assert report["kube_proxy"]["mode"] is None and report["kube_proxy"]["evidence"] == []
    assert report["kube_proxy"]["endpoint"]["reachable"] is False
    assert report["cni"]["name"] is None
    # a new namespace does not forward; with no Kubernetes here that is not a warning
    assert report["sysctls"]["net.ipv4.ip_forward"] == "0"
    assert report["sysctls"]["net.ipv4.vs.conntrack"] is None
    assert report["sysctls"]["net.ipv4.conf.all.rp_filter"] == h1_rp_filter(nodes)


def test_kube_proxy_iptables_node_on_nft_with_calico(info):
    report = info["h2"]
    ipt = report["iptables"]
    assert ipt["backend"] == "nft" and ipt["in_use"] == ["nft"] and not ipt["mixed"]
    assert ipt["kubernetes_backend"] == "nft"
    assert ipt["backends"]["nft"]["kubernetes_hint"] is True
    assert ipt["backends"]["nft"]["rules"] == 64 and ipt["backends"]["legacy"]["rules"] == 0
    assert report["kube_proxy"]["mode"] == "iptables"
    assert report["kube_proxy"]["mode_source"] == "inferred"
    assert report["cni"]["name"] == "calico" and report["cni"]["calico_dataplane"] == "iptables"
    assert "vxlan.calico interface" in report["cni"]["evidence"]
    assert {t["owner"] for t in report["nftables"]["tables"]} == {"iptables-nft"}
    assert report["findings"] == []


def test_mixed_node_warns_of_mixed_backends(info):
    report = info["h3"]
    assert report["iptables"]["mixed"] is True
    assert report["iptables"]["backends"]["legacy"]["policies"] == ["filter/FORWARD=DROP"]
    assert [f["id"] for f in report["findings"]] == ["mixed_iptables_backends"]
    assert "legacy 9 rules, nft 64 rules" in report["findings"][0]["message"]


# ---------------------------------------------------------------------------------------------
# kube-proxy's /proxyMode: a stub HTTP server, not kube-proxy, answering inside the namespace

PROXY_MODE_STUB = (
    "import http.server, sys\n"
    "class Stub(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = sys.argv[2].encode() if self.path == '/proxyMode' else b'404'\n"
    "        self.send_response(200 if self.path == '/proxyMode' else 404)\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *args): pass\n"
    "server = http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), Stub)\n"
    "print('ready', flush=True)\n"
    "server.serve_forever()\n"
)


@pytest.fixture
def proxy_mode_stubs(netns_pair):
    """h1 has a /proxyMode stub on port 10999, h2 one on the default port 10249."""
    lab, inventory = netns_pair
    started = []
    for host, port in zip(lab.hosts, (10999, 10249)):
        build(host, "kube-iptables-calico")
        stub = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, "-c", PROXY_MODE_STUB, str(port), "iptables"],
                                stdout=subprocess.PIPE, text=True)
        started.append(stub)
        assert stub.stdout.readline().strip() == "ready"
    yield lab, inventory
    for stub in started:
        stub.kill()
        stub.wait()


def test_mode_is_read_from_the_endpoint_at_the_given_address(proxy_mode_stubs, playbook):
    lab, inventory = proxy_mode_stubs
    play = [{**INFO_PLAY[0], "tasks": [{"name": "dataplane_info",
                                        "kubenode.dataplane.dataplane_info": {"metrics_address": "127.0.0.1:10999"}}]}]
    run = playbook(play, inventory)
    assert run.rc == 0, run.explain()
    asked = run.task("dataplane_info", "h1")["result"]["kube_proxy"]
    assert asked["mode"] == "iptables" and asked["mode_source"] == "endpoint"
    assert asked["endpoint"] == {"url": "http://127.0.0.1:10999/proxyMode", "reachable": True, "error": None}
    # h2's stub listens on the default port only: the option is honoured, so it is not asked
    other = run.task("dataplane_info", "h2")["result"]["kube_proxy"]
    assert other["mode"] == "iptables" and other["mode_source"] == "inferred"
    assert other["endpoint"]["reachable"] is False


# ---------------------------------------------------------------------------------------------
# the doctor playbook


def report_of(run, host: str) -> list[str]:
    return run.task("Report, warnings first", host)["result"]["msg"]


def test_doctor_prints_warnings_first_and_a_fleet_summary(nodes, playbook):
    _lab, inventory = nodes
    run = playbook(DOCTOR, inventory, check=True, extra_vars={"doctor_become": False}, forks=3)
    assert run.rc == 0 and run.failed() == 0, run.explain()
    assert run.changed() == 0
    mixed = report_of(run, "h3")
    assert mixed[0] == "WARNINGS: 1"
    assert mixed[1].startswith("  [mixed_iptables_backends] both iptables backends hold rules")
    assert mixed[2].strip().startswith("remedy: keep nft")
    topics = [re.split(r"\s{2,}", line, maxsplit=1)[0] for line in mixed[3:]]
    assert topics[:5] == ["kube-proxy", "iptables", "nftables", "IPVS", "CNI"]
    assert mixed[3].startswith("kube-proxy   mode iptables (inferred from KUBE-SERVICES chain")
    bare = report_of(run, "h1")
    assert bare[0] == "WARNINGS: none" and bare[1].startswith("kube-proxy   not seen")
    assert report_of(run, "h2")[0] == "WARNINGS: none"
    summary = [r for r in run.results if r["task"] == "Summary of the fleet, nodes with warnings first"]
    assert len(summary) == 1, "the summary runs once for the fleet"
    assert summary[0]["result"]["msg"] == [
        "3 nodes: 1 with warnings, 2 without, 0 without a report",
        "WARN h3: mixed_iptables_backends",
        "ok   h1",
        "ok   h2",
    ]
    # the text a person reads has the warning before anything else of h3
    section = run.stdout[run.stdout.index("TASK [Report, warnings first]"):]
    printed = section[section.index("ok: [h3] =>"):]
    assert printed.index("mixed_iptables_backends") < printed.index("kube-proxy   mode")


def test_doctor_can_fail_the_nodes_with_warnings(nodes, playbook):
    _lab, inventory = nodes
    run = playbook(DOCTOR, inventory, extra_vars={"doctor_become": False, "doctor_fail_on_warnings": True})
    assert run.rc != 0
    assert run.task("Fail the nodes that have warnings", "h3")["status"] == "failed"
    assert run.task("Fail the nodes that have warnings", "h1")["status"] == "ok"
    assert run.recap()["h3"]["failed"] == 1 and run.recap()["h2"]["failed"] == 0
