"""Captures the fixtures of dataplane_info's unit tests from real tools and kernels.

    # a netns scenario on this machine's kernel (see dataplane_info_scenarios.py)
    python3 tests/netns/capture_dataplane_info.py netns kube-iptables-calico
    # a VM scenario, on the real-kernel VM started by `make vm-up`
    python3 tests/netns/capture_dataplane_info.py vm vm-ipvs --inventory build/inventory-vm.yml

Each scenario becomes tests/unit/fixtures/dataplane_info/<scenario>/ with
- commands.yml: every command dataplane_info runs, with the exit status and the file holding
  the output the real tool printed;
- root/: the files dataplane_info reads (/proc/sys values, /proc/modules, /proc/net/ip_vs,
  modules.builtin), copied as the kernel showed them, read before any command runs; a
  /sys/module/NAME folder is recorded as a folder with an empty .captured file; modules.dep
  is cut to the lines of the modules dataplane_info reports;
- kernel-config.txt: the lines of the kernel configuration for the symbols dataplane_info
  reports (an excerpt: the whole file is ~200 KB), and meta.yml saying where it came from.
Nothing here runs in the host's own network namespace.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "build" / "collections"))

from ansible_collections.kubenode.dataplane.plugins.module_utils import _facts  # noqa: E402
from tests.harness.netns_hosts import ip, in_ns  # noqa: E402
from tests.netns import dataplane_info_scenarios as scenarios  # noqa: E402

FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "dataplane_info"
TOOLS = ["iptables", "iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save", "nft", "ip"]


def commands() -> list[list[str]]:
    """The commands dataplane_info runs, in its order."""
    return [
        ["iptables", "-V"],
        ["iptables-legacy-save"],
        ["ip6tables-legacy-save"],
        ["iptables-nft-save"],
        ["ip6tables-nft-save"],
        ["nft", "-j", "list", "tables"],
        ["nft", "list", "tables"],
        ["ip", "-j", "-d", "addr", "show"],
    ]


def files_wanted(release: str) -> list[str]:
    names = list(_facts.SYSCTLS) + list(_facts.IPVS_SYSCTLS)
    paths = ["/proc/sys/" + n.replace(".", "/") for n in names]
    paths += ["/proc/sys/kernel/osrelease", "/proc/modules", "/proc/net/ip_vs"]
    paths += [f"/lib/modules/{release}/modules.builtin"]
    return paths


class Target:
    """Runs commands in a netns or in the VM; returns CompletedProcess."""

    def __init__(self, kind: str, name: str, vm=None) -> None:
        self.kind, self.name, self.vm = kind, name, vm

    def run(self, argv: list[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        if self.kind == "netns":
            return in_ns(self.name, argv, check=check, input=input)
        proc = subprocess.run(self.vm.ssh_argv(*argv), input=input, capture_output=True, text=True, check=False)
        if check and proc.returncode:
            raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr}")
        return proc


def capture(target: Target, scenario: str) -> Path:
    out = FIXTURES / scenario
    shutil.rmtree(out, ignore_errors=True)
    (out / "out").mkdir(parents=True)
    release = target.run(["uname", "-r"]).stdout.strip()
    for path in files_wanted(release):
        proc = target.run(["cat", path], check=False)
        if proc.returncode == 0:
            dest = out / "root" / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(proc.stdout)
    vs = target.run(["ls", "/proc/sys/net/ipv4/vs"], check=False)
    for name in vs.stdout.split() if vs.returncode == 0 else []:
        dest = out / "root" / "proc/sys/net/ipv4/vs" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(target.run(["cat", f"/proc/sys/net/ipv4/vs/{name}"]).stdout)
    for name in _facts.MODULES:
        if target.run(["test", "-d", f"/sys/module/{name}"], check=False).returncode == 0:
            (out / "root" / "sys" / "module" / name).mkdir(parents=True, exist_ok=True)
            (out / "root" / "sys" / "module" / name / ".captured").write_text("")
    dep = target.run(["cat", f"/lib/modules/{release}/modules.dep"], check=False)
    if dep.returncode == 0:
        dest = out / "root" / "lib" / "modules" / release / "modules.dep"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text("".join(line + "\n" for line in dep.stdout.splitlines()
                                if _facts._module_name(line.split(":", 1)[0]) in _facts.MODULES))
    symbols = {"CONFIG_MODULES"} | set(_facts.KERNEL_FEATURES.values()) | set(_facts.MODULES.values())
    for source in ("/proc/config.gz", f"/boot/config-{release}"):
        reader = ["zcat", source] if source.endswith(".gz") else ["cat", source]
        proc = target.run(reader, check=False)
        if proc.returncode == 0:
            lines = [line for line in proc.stdout.splitlines()
                     if any(re.match(rf"^(# )?{s}[= ]", line) for s in symbols)]
            (out / "kernel-config.txt").write_text("\n".join(lines) + "\n")
            (out / "meta.yml").write_text(yaml.safe_dump({"kernel_config": source, "release": release, "target": target.kind}))
            break
    # the commands last, as dataplane_info runs them: listing nftables may autoload nf_tables
    recorded = []
    for argv in commands():
        proc = target.run(argv, check=False)
        name = "_".join(re.sub(r"[^A-Za-z0-9.-]", "", a) for a in argv) + ".txt"
        (out / "out" / name).write_text(proc.stdout)
        recorded.append({"argv": argv, "rc": proc.returncode, "out": f"out/{name}", "err": proc.stderr.strip()})
    (out / "commands.yml").write_text(yaml.safe_dump(recorded, sort_keys=False))
    tools = {tool: target.run(["which", tool], check=False).stdout.strip() or None for tool in TOOLS}
    meta = yaml.safe_load((out / "meta.yml").read_text()) if (out / "meta.yml").exists() else {"release": release}
    meta["tools"] = tools
    (out / "meta.yml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return out


def netns(scenario: str) -> Path:
    name = f"kncap-{scenario}"[:30]
    ip("netns", "add", name)
    try:
        in_ns(name, ["ip", "link", "set", "lo", "up"])
        scenarios.SCENARIOS[scenario](lambda argv, input=None: in_ns(name, argv, input=input))
        return capture(Target("netns", name), scenario)
    finally:
        ip("netns", "del", name, check=False)


VM_SCENARIOS = {
    # a fresh boot: nothing loaded
    "vm-plain": [],
    # what kube-proxy's ipvs mode leaves: the modules, kube-ipvs0 with a ClusterIP, an IPVS service
    # (and forwarding on, as on any Kubernetes node)
    "vm-ipvs": [
        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        ["modprobe", "-a", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack"],
        ["ip", "link", "add", "kube-ipvs0", "type", "dummy"],
        ["ip", "addr", "add", "10.96.0.1/32", "dev", "kube-ipvs0"],
        ["ip", "addr", "add", "fd00:10:96::a/128", "dev", "kube-ipvs0"],
        ["ipvsadm", "-A", "-t", "10.96.0.1:443", "-s", "rr"],
        ["ipvsadm", "-a", "-t", "10.96.0.1:443", "-r", "192.168.122.10:6443", "-m"],
        ["ipvsadm", "-A", "-t", "[fd00:10:96::a]:53", "-s", "rr"],
        ["ipvsadm", "-A", "-u", "10.0.2.15:30053", "-s", "rr"],
        ["ipvsadm", "-A", "-f", "1", "-s", "sh"],
    ],
}
VM_UNDO = [
    ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"],
    ["ipvsadm", "-C"],
    ["ip", "link", "del", "kube-ipvs0"],
    ["modprobe", "-r", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs"],
]


def vm(scenario: str, inventory: Path) -> Path:
    from tests.harness.vm.vm import VM, state_path  # pylint: disable=import-outside-toplevel

    machine = VM.from_state(json.loads(state_path(inventory.resolve()).read_text()))
    target = Target("vm", "kubenode-vm", machine)
    try:
        for argv in VM_SCENARIOS[scenario]:
            target.run(argv)
        return capture(target, scenario)
    finally:
        for argv in VM_UNDO:
            target.run(argv, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("kind", choices=["netns", "vm"])
    parser.add_argument("scenario")
    parser.add_argument("--inventory", type=Path, default=ROOT / "build" / "inventory-vm.yml")
    args = parser.parse_args()
    out = netns(args.scenario) if args.kind == "netns" else vm(args.scenario, args.inventory)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
