"""kube-proxy on a node: parsers on real captured output, the preflight, and the leftovers clean-up
driven by YAML cases that list the exact commands expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kube_proxy_node as node
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import converge
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import Runner

FIX = Path(__file__).resolve().parents[3] / "unit" / "fixtures" / "kube_proxy"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


# ---- parsers on captured output -----------------------------------------------------------------

def test_kernel_release_of_the_vm_and_of_this_host():
    assert node.parse_kernel_release(fixture("vm-uname-r.txt")) == (6, 1, 0)
    assert node.parse_kernel_release(fixture("host-uname-r.txt")) == (6, 18, 44)
    assert node.parse_kernel_release("5.14.0-427.13.1.el9_4.x86_64") == (5, 14, 0)
    assert node.parse_kernel_release("not a kernel") is None


def test_nft_version_of_the_vm_and_of_this_host():
    assert node.parse_nft_version(fixture("vm-nft-version.txt")) == (1, 0, 6)
    assert node.parse_nft_version(fixture("host-nft-version.txt")) == (1, 0, 6)
    assert node.parse_nft_version("nftables v0.9.8 (E.D.S.)") == (0, 9, 8)


def test_version_comparisons_against_the_nftables_thresholds():
    # tuples compare numerically: 5.4 < 5.13 although "5.4" > "5.13" as text
    assert node.parse_kernel_release("5.4.0-150-generic") < node.NFTABLES_MIN_KERNEL
    assert node.parse_kernel_release("5.13.0") >= node.NFTABLES_MIN_KERNEL
    assert node.parse_kernel_release(fixture("vm-uname-r.txt")) >= node.NFTABLES_MIN_KERNEL
    assert (0, 9, 8) < node.NFTABLES_MIN_NFT <= (1, 0, 1) <= node.parse_nft_version(fixture("vm-nft-version.txt"))


def test_proc_net_ip_vs_from_the_vm():
    services = node.parse_proc_ip_vs(fixture("vm-proc-net-ip_vs.txt"))
    assert [str(s) for s in services] == [
        "TCP 10.96.0.1:443", "TCP [fd00:10:96::1]:443", "TCP 10.0.2.15:30080", "TCP 10.96.0.10:53",
        "UDP 10.96.0.10:53", "TCP 192.0.2.10:80",
    ]  # the FWM service has no address: never kube-proxy's
    assert services[1].ipvsadm_argv() == ["-t", "[fd00:10:96::1]:443"]


def test_ip_addr_json_from_the_vm():
    addrs = node.parse_ip_addr_json(fixture("vm-ip-j-addr-show.json"))
    assert addrs["kube-ipvs0"] == ["10.96.0.1", "10.96.0.10", "fd00:10:96::1"]
    assert "10.0.2.15" in addrs["eth0"]


def test_iptables_save_after_the_ipvs_takeover():
    tables = node.parse_save(fixture("netns-iptables-nft-save-after-ipvs-takeover.txt"))
    nat = tables["nat"]
    assert "KUBE-SVC-NPX46M4PTMTKRN6Y" in nat.chains and "KUBE-NODE-PORT" in nat.chains
    jumps = [r for r in nat.rules if r.chain == "KUBE-NODEPORTS"]
    assert [r.target for r in jumps] == ["KUBE-EXT-CDGGSHYLG3RE2FKL"]
    assert node.chains_with(tables, "cali-") == 6


# ---- preflight ------------------------------------------------------------------------------------

def facts(**over):
    base = {
        "kernel_release": "6.1.0-56-amd64", "nft_version": "1.0.6",
        "tools": {"ipset": "/usr/sbin/ipset", "conntrack": "/usr/sbin/conntrack", "nft": "/usr/sbin/nft",
                  "iptables": "/usr/sbin/iptables"},
        "ipvs": {"available": True},
        "iptables": {"legacy": {"rules": 0}, "nft": {"rules": 40}, "in_use": ["nft"]},
    }
    base.update(over)
    return base


def test_preflight_passes_on_the_vm_for_every_mode():
    for mode in ("iptables", "ipvs", "nftables"):
        assert node.preflight(mode, facts())["ok"], mode
    assert node.preflight("ipvs", facts())["warnings"] == [node.IPVS_DEPRECATION]


@pytest.mark.parametrize("mode,over,problem", [
    ("nftables", {"kernel_release": "5.10.0-28-amd64"}, "the kernel 5.10.0-28-amd64 is older than 5.13"),
    ("nftables", {"nft_version": "0.9.8"}, "nft 0.9.8 is older than 1.0.1"),
    ("nftables", {"nft_version": None, "tools": {"nft": None}}, "the nft program is not installed"),
    ("ipvs", {"ipvs": {"available": False}}, "has no IP_VS"),
    ("ipvs", {"tools": {"ipset": None, "conntrack": "/usr/sbin/conntrack", "iptables": "/usr/sbin/iptables"}},
     "the ipset program is not installed"),
    ("iptables", {"tools": {"iptables": None}}, "the iptables program is not installed"),
])
def test_preflight_names_what_stops_the_mode(mode, over, problem):
    verdict = node.preflight(mode, facts(**over))
    assert not verdict["ok"]
    assert any(problem in p for p in verdict["problems"]), verdict["problems"]


def test_calico_report_says_when_backends_differ():
    iptables = {"legacy": {"calico_chains": 12, "kube_chains": 0}, "nft": {"calico_chains": 0, "kube_chains": 20}}
    report = node.calico_report(iptables, ["eth0", "tunl0", "cali12345"])
    assert report["present"] and report["interfaces"] == ["tunl0", "cali12345"]
    assert "Calico's chains are in the legacy backend but kube-proxy's are in nft" in report["mismatch"]


# ---- leftovers, command by command ------------------------------------------------------------------

class FakeModule:
    """run_command/get_bin_path of AnsibleModule over a table of captured outputs; no `timeout` wrapper."""

    def __init__(self, tools, outputs):
        self.tools = set(tools)
        self.outputs = outputs
        self.stdin = {}

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return name if name in self.tools else None

    def run_command(self, argv, data=None, **_kw):
        self.stdin.setdefault(argv[0], data) if data else None
        return 0, self.outputs.get(" ".join(argv), ""), ""


def _load(value):
    return fixture(value[1:]) if isinstance(value, str) and value.startswith("@") else value


CASES = yaml.safe_load(fixture("leftovers-cases.yml"))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_leftovers(case):
    module = FakeModule(case["tools"], {k: _load(v) for k, v in case.get("outputs", {}).items()})
    files = {k: _load(v) for k, v in case.get("files", {}).items()}
    runner = Runner(module)
    backend = node.LeftoversBackend(runner, case["mode"], case.get("node_port_range", node.DEFAULT_NODE_PORT_RANGE),
                                    case.get("exclude_cidrs", []), read_file=files.get)
    # the fake kernel does not change, so the verify step must find what was removed: expect that error,
    # after every command ran; the commands are the point of these cases
    with pytest.raises(node.DataplaneError, match="differs from the one applied"):
        converge(backend, check_mode=False, diff=False)
    assert runner.history == case["commands"]
    for tool, text in case.get("stdin", {}).items():
        assert module.stdin[tool] == text
    before = backend._before
    assert len(before.lines()) == case["removed"] and before.kept == case["kept"]


def test_leftovers_check_mode_runs_only_reads_and_the_dry_run():
    case = CASES[0]
    module = FakeModule(case["tools"], {k: _load(v) for k, v in case["outputs"].items()})
    runner = Runner(module)
    backend = node.LeftoversBackend(runner, "ipvs", read_file={"/proc/net/ip_tables_names": ""}.get)
    result = converge(backend, check_mode=True, diff=True)
    assert result["changed"] and len(result["removed"]) == case["removed"]
    # reads and dry runs only: the commands of the case up to its first real restore
    first_apply = next(i for i, argv in enumerate(case["commands"]) if argv[-1] == "--noflush")
    assert runner.history == case["commands"][:first_apply]
    assert "ipv4 nft nat: chain KUBE-SVC-6FBO7U4TQWJIO4QC" in result["diff"]["before"] and result["diff"]["after"] == ""


def test_leftovers_refuses_a_kube_ipvs0_that_is_not_a_dummy():
    link = json.loads(fixture("vm-ip-j-d-link-kube-ipvs0.json"))
    link[0]["linkinfo"]["info_kind"] = "bridge"
    module = FakeModule(["ip"], {"ip -j addr show": fixture("vm-ip-j-addr-show.json"),
                                 "ip -j -d link show dev kube-ipvs0": json.dumps(link)})
    backend = node.LeftoversBackend(Runner(module), "iptables", read_file={}.get)
    with pytest.raises(node.LeftoverError, match="kube-ipvs0 is a bridge interface, not the dummy interface"):
        converge(backend, check_mode=True, diff=False)


@pytest.mark.parametrize("args,message", [
    (("ipvx",), "mode must be iptables, ipvs or nftables"),
    (("ipvs", "30000:32767"), "node_port_range '30000:32767' is not a port range"),
    (("ipvs", "30000-32767", ["10.0.0.0/33"]), "exclude_cidrs"),
])
def test_leftovers_bad_options(args, message):
    with pytest.raises(node.LeftoverError, match=message):
        node.LeftoversBackend(Runner(FakeModule([], {})), *args)
