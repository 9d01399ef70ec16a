"""Benchmark: kubenode.dataplane.kernel_module against community.general.modprobe in a loop and against modprobe -a.

On the real-kernel VM, one boot, the seven modules a Kubernetes node loads (ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh,
nf_conntrack, br_netfilter, overlay), all with persistence:

- the module: one task, ``kubenode.dataplane.kernel_module`` with ``name: [the seven]`` and ``persistent: present``;
- the peer: ``community.general.modprobe`` with ``persistent: present`` looped over the same seven names;
- the raw-tool floor: ``modprobe -a`` of the seven over one ssh call (no persistence files).

The module and the peer are each timed as one ``ansible-playbook`` run (wall clock on the controller, same
inventory, stock strategy, pipelining as in ansible.cfg), twice in a row: the first run loads the modules and writes
the files, the no-op run finds everything in place. Before every first run the seven modules and the dependencies they pulled in are unloaded
(``modprobe -r``, holders first) and both tools' persistence files removed, and /proc/modules is checked to be back
to the state of the fresh boot, so no run can be falsely "first". The order of module and peer alternates between
rounds. For the breakdown, a one-task ``ansible.builtin.ping`` playbook is timed too, and the AnsiballZ payloads of
the module and of ping are timed on the node (no controller, no SSH).

    make bench BENCH=kmod       # boots its own VM (inventory build/inventory-bench-kmod.yml) and stops it at the end
    KUBENODE_VM_INVENTORY=build/inventory-vm.yml .venv-bench/bin/python tests/bench/bench_kmod.py

With KUBENODE_VM_INVENTORY it uses that VM (already up) and leaves it running. Writes docs/performance/kmod.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.harness import ansible_run  # noqa: E402  pylint: disable=wrong-import-position
from tests.harness.timed_playbook import NODE_TIMER, timed_playbook  # noqa: E402  pylint: disable=wrong-import-position
from tests.harness.vm import vm as vmharness  # noqa: E402  pylint: disable=wrong-import-position

REPORT = ROOT / "docs" / "performance" / "kmod.md"
VM_PY = ROOT / "tests" / "harness" / "vm" / "vm.py"
OWN_INVENTORY = ROOT / "build" / "inventory-bench-kmod.yml"
TARGET = 4.0
SET = ["ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack", "br_netfilter", "overlay"]
# holders before the modules they hold; modprobe -r then drops the dependencies nothing uses any more
UNLOAD_ORDER = ["ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs", "br_netfilter", "overlay", "nf_conntrack"]
OUR_FILES = ["/etc/modules-load.d/kubenode-dataplane.conf", "/etc/modprobe.d/kubenode-dataplane.conf"]
# community.general.modprobe writes one file per module in each folder
PEER_FILES = [f"/etc/modules-load.d/{name}.conf" for name in SET] + [f"/etc/modprobe.d/{name}.conf" for name in SET]
TIME_RE = re.compile(r"^KN_TIME (\d+(?:\.\d+)?)$", re.MULTILINE)
TIMER = NODE_TIMER


def log(msg: str) -> None:
    print(f"[bench kmod {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Node:
    """The VM, reached with plain ssh for setup, checks and the raw-tool runs."""

    def __init__(self, machine: vmharness.VM, inventory: Path) -> None:
        self.machine = machine
        self.inventory = inventory
        self.baseline: set = set()

    def ssh_argv(self, *remote: str) -> list:
        # the harness's 3 s connect timeout is too short when other VMs share the host's two cores
        return [("ConnectTimeout=30" if word == "ConnectTimeout=3" else word) for word in self.machine.ssh_argv(*remote)]

    def sh(self, script: str, timeout: int = 600) -> str:
        """Run a bash script on the node (every script here can run twice: retried when ssh cannot connect)."""
        attempt = 1
        while True:
            proc = subprocess.run(self.ssh_argv("bash", "-s"), input=script, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            if proc.returncode != 255 or attempt == 3:
                break
            log(f"ssh failed ({proc.stderr.strip()[-200:]}), again")
            attempt += 1
            time.sleep(2)
        if proc.returncode != 0:
            raise RuntimeError(f"{script[:300]}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return proc.stdout

    def loaded(self) -> set:
        return set(self.sh("cut -d' ' -f1 /proc/modules").split())

    def existing(self, paths: list) -> list:
        out = self.sh("for f in " + " ".join(shlex.quote(p) for p in paths) + "; do [ -e \"$f\" ] && echo \"$f\"; done; true")
        return out.split()

    def reset(self) -> None:
        """Back to the fresh boot: the seven and their dependencies unloaded, no persistence file of either tool."""
        self.sh("set -e\nfor m in " + " ".join(UNLOAD_ORDER) + "; do\n"
                "  if grep -q \"^$m \" /proc/modules; then modprobe -r \"$m\"; fi\ndone\n"
                # modprobe -r leaves some dependencies behind (stp and llc under bridge): unload whatever the
                # fresh boot did not have, unused ones first
                "for pass in 1 2 3 4; do\n"
                "  for m in $(awk '$3 == 0 {print $1}' /proc/modules); do\n"
                "    grep -qx \"$m\" /root/bench/baseline || rmmod \"$m\"\n"
                "  done\ndone\n"
                "rm -f " + " ".join(OUR_FILES + PEER_FILES) + "\n")
        now = self.loaded()
        still = sorted(set(SET) & now)
        extra = sorted(now - self.baseline)
        if still or extra:
            raise RuntimeError(f"unloading failed, a first run would not be one: still loaded {still}, not in the fresh "
                               f"boot's /proc/modules {extra}")
        left = self.existing(OUR_FILES + PEER_FILES)
        if left:
            raise RuntimeError(f"persistence files left after removal: {left}")

    def check_loaded(self, what: str) -> None:
        missing = sorted(set(SET) - self.loaded())
        if missing:
            raise RuntimeError(f"{what}: {missing} not loaded after the run")

    def raw(self) -> tuple[float, float]:
        """Wall clock of one ssh call running ``modprobe -a`` of the seven, and the time modprobe took on the node."""
        script = "TIMEFORMAT='KN_TIME %R'; time modprobe -a " + " ".join(SET)
        argv = self.ssh_argv("bash", "-c", shlex.quote(script))
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"modprobe -a failed: {proc.stderr[-2000:]}")
        match = TIME_RE.search(proc.stderr)
        if not match:
            raise RuntimeError(f"no time in {proc.stderr[-500:]!r}")
        return elapsed, float(match.group(1))

    def timed(self, command: str) -> tuple[float, str]:
        """Seconds a command takes on the node (timed there by python3), and its output."""
        first, _sep, rest = self.sh(f"python3 /root/bench/timer.py {command}").partition("\n")
        seconds, rc = first.split()
        if rc != "0":
            raise RuntimeError(f"{command} exited with {rc}: {rest[-2000:]}")
        return float(seconds), rest


def playbook(node: Node, tasks: list, keep: bool = False) -> tuple[float, ansible_run.Run]:
    return timed_playbook(node.inventory, tasks, keep=keep, timeout=1800)


MODULE_TASK = {"name": "kernel modules", "kubenode.dataplane.kernel_module": {"name": SET, "persistent": "present"}}
PEER_TASK = {"name": "kernel modules", "community.general.modprobe": {"name": "{{ item }}", "persistent": "present"},
             "loop": SET}
PING_TASK = {"name": "ping", "ansible.builtin.ping": {}}


def run_module(node: Node, row: dict) -> None:
    node.reset()
    seconds, run = playbook(node, [MODULE_TASK])
    result = run.task("kernel modules")["result"]
    assert result["changed"] is True and sorted(result["plan"]["load"]) == sorted(SET), result
    node.check_loaded("kernel_module")
    assert node.existing(OUR_FILES) == OUR_FILES[:1], node.existing(OUR_FILES)
    row["module_first"].append(seconds)
    seconds, run = playbook(node, [MODULE_TASK])
    assert run.task("kernel modules")["result"]["changed"] is False
    row["module_noop"].append(seconds)


def run_peer(node: Node, row: dict) -> None:
    node.reset()
    seconds, run = playbook(node, [PEER_TASK])
    items = run.task("kernel modules")["result"]["results"]
    assert len(items) == len(SET) and all(i["changed"] for i in items), items
    node.check_loaded("community.general.modprobe")
    assert len(node.existing(PEER_FILES)) == len(SET), node.existing(PEER_FILES)
    row["peer_first"].append(seconds)
    seconds, run = playbook(node, [PEER_TASK])
    items = run.task("kernel modules")["result"]["results"]
    assert not any(i["changed"] for i in items), items
    row["peer_noop"].append(seconds)


def run_raw(node: Node, row: dict) -> None:
    node.reset()
    wall, on_node = node.raw()
    node.check_loaded("modprobe -a")
    row["raw_first"].append(wall)
    row["raw_first_node"].append(on_node)
    wall, on_node = node.raw()
    row["raw_noop"].append(wall)
    row["raw_noop_node"].append(on_node)


def run_payloads(node: Node, payloads: dict, row: dict) -> None:
    node.reset()
    seconds, out = node.timed(f"python3 {payloads['kernel_module']}")
    result = json.loads(out)
    assert result.get("changed") is True and not result.get("failed"), out[:2000]
    row["payload_first"].append(seconds)
    seconds, out = node.timed(f"python3 {payloads['kernel_module']}")
    result = json.loads(out)
    assert result.get("changed") is False and not result.get("failed"), out[:2000]
    row["payload_noop"].append(seconds)
    seconds, out = node.timed(f"python3 {payloads['ping']}")
    assert json.loads(out).get("ping") == "pong", out[:2000]
    row["payload_ping"].append(seconds)
    row["python_start"].append(node.timed("python3 -c pass")[0])


def bench(node: Node, runs: int) -> dict:
    node.sh("mkdir -p /root/bench && rm -rf /root/.ansible/tmp/ansible-tmp-*")
    node.sh("cat > /root/bench/timer.py <<'KN_EOF'\n" + TIMER + "KN_EOF\n")
    present = sorted(set(SET) & node.loaded())
    if present:
        raise RuntimeError(f"{present} loaded right after boot: something on the VM loads them, no run could be first")
    foreign = node.existing(OUR_FILES + PEER_FILES)
    if foreign:
        raise RuntimeError(f"{foreign} exist before the benchmark wrote anything; refusing to remove files it did not write")
    node.baseline = node.loaded()
    node.sh("cut -d' ' -f1 /proc/modules > /root/bench/baseline")
    # the warm-up: the controller's files and the .ko files in the page cache, the ssh control socket open
    log("warm-up (not measured): a ping playbook, modprobe -a of the seven; the payloads, with the files kept")
    playbook(node, [PING_TASK])
    run_raw(node, {k: [] for k in ("raw_first", "raw_noop", "raw_first_node", "raw_noop_node")})
    node.reset()
    node.sh("rm -rf /root/.ansible/tmp/ansible-tmp-*")
    playbook(node, [PING_TASK, MODULE_TASK], keep=True)
    payloads = {name: node.sh(f"ls -t /root/.ansible/tmp/ansible-tmp-*/AnsiballZ_{name}.py | head -1").strip()
                for name in ("kernel_module", "ping")}
    row: dict = {k: [] for k in ("module_first", "module_noop", "peer_first", "peer_noop", "raw_first", "raw_noop",
                                 "raw_first_node", "raw_noop_node", "ping", "payload_first", "payload_noop",
                                 "payload_ping", "python_start")}
    for rep in range(runs):
        log(f"run {rep + 1}/{runs}")
        order = (run_module, run_peer) if rep % 2 == 0 else (run_peer, run_module)
        for step in order:
            step(node, row)
        run_raw(node, row)
        row["ping"].append(playbook(node, [PING_TASK])[0])
        run_payloads(node, payloads, row)
        log("  " + ", ".join(f"{key} {values[-1]:.2f}" for key, values in row.items()))
    node.reset()
    return row


def med(values: list) -> float:
    return statistics.median(values)


def write_report(row: dict, machine_info: str, command: str, total: float, load: tuple) -> None:
    mf, mn = med(row["module_first"]), med(row["module_noop"])
    pf, pn = med(row["peer_first"]), med(row["peer_noop"])
    rf, rn = med(row["raw_first"]), med(row["raw_noop"])
    ping = med(row["ping"])
    zf, zn, zp = med(row["payload_first"]), med(row["payload_noop"]), med(row["payload_ping"])
    first_ok, noop_ok = pf / mf >= TARGET, pn / mn >= TARGET
    runs = len(row["module_first"])
    lines = [
        "# Kernel modules: kernel_module",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine_info}.",
        "",
        f"The seven modules of a Kubernetes node ({', '.join(SET)}), with `persistent: present`:",
        "one `kubenode.dataplane.kernel_module` task against `community.general.modprobe` (community.general 11.4.2, also",
        "`persistent: present`) looped over the same list. Each figure is one `ansible-playbook` run timed on the controller",
        "(same inventory, stock strategy, pipelining on as in ansible.cfg), the median of the runs shown, all in one boot of",
        "the VM. Reproduce:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"| ansible-playbook run | runs | `kernel_module`, one task | `community.general.modprobe`, loop of 7 "
        f"| ratio (target >= {TARGET:.0f}x) | `modprobe -a` over ssh (floor) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| first run (the seven unloaded, no files) | {runs} | {mf:.2f} s | {pf:.2f} s | **{pf / mf:.2f}x** "
        f"({'met' if first_ok else 'MISSED'}) | {rf:.2f} s |",
        f"| no-op run (all loaded, files in place) | {runs} | {mn:.2f} s | {pn:.2f} s | **{pn / mn:.2f}x** "
        f"({'met' if noop_ok else 'MISSED'}) | {rn:.2f} s |",
        "",
        "Results against the target (at least 4x faster than the loop):",
        "",
        f"- first run: {pf / mf:.2f}x ({'meets' if first_ok else 'MISSES'} >= {TARGET:.0f}x);",
        f"- no-op run: {pn / mn:.2f}x ({'meets' if noop_ok else 'MISSES'} >= {TARGET:.0f}x).",
        "",
        "Where the time goes (medians):",
        "",
        f"- A playbook of one `ansible.builtin.ping` task against the same VM: {ping:.2f} s, the floor of any one-task playbook",
        "  (controller start, plugin loading, the SSH exchange, the node's Python running one AnsiballZ payload). The",
        f"  module's runs ({mf:.2f} s, {mn:.2f} s) differ from it by {mf - ping:+.2f} s and {mn - ping:+.2f} s; each of the loop's six extra items costs",
        f"  {(pf - mf) / (len(SET) - 1):.2f} s (first run) and {(pn - mn) / (len(SET) - 1):.2f} s (no-op), one more payload each.",
        f"- On the node, without controller and SSH: the module's AnsiballZ payload takes {zf:.2f} s (first) and {zn:.2f} s",
        f"  (no-op), the ping module's {zp:.2f} s, `python3 -c pass` {med(row['python_start']):.2f} s. Most of any payload's time",
        "  is ansible-core starting on the node (unpacking the payload, importing ansible.module_utils.basic and what it",
        "  imports), the same for every module: the loop pays it once per item, the module once.",
        f"- `modprobe -a` of the seven on the node: {med(row['raw_first_node']):.2f} s when they are unloaded, "
        f"{med(row['raw_noop_node']):.3f} s when loaded;",
        f"  over one ssh call (a fresh connection each time) {rf:.2f} s and {rn:.2f} s.",
        "",
        "Notes:",
        "",
        "- Before every first run the seven modules are unloaded with `modprobe -r` (holders first), then with `rmmod`",
        "  every module the fresh boot did not have (their dependencies: `modprobe -r` leaves stp and llc behind); the",
        "  collection's files (/etc/modules-load.d/kubenode-dataplane.conf, /etc/modprobe.d/kubenode-dataplane.conf) and",
        "  the peer's (/etc/modules-load.d/NAME.conf, /etc/modprobe.d/NAME.conf) are removed. The run is refused unless",
        "  /proc/modules is then exactly as after the boot. Each first run is checked to report changed, to leave the seven",
        "  loaded and its files written; each no-op run to report nothing changed.",
        "- The module and the peer alternate which goes first in each round. A warm-up (a ping playbook and one",
        "  `modprobe -a`, not counted) puts the controller's files and the `.ko` files in the page caches for all alike.",
        "- The VM runs under QEMU software emulation (TCG) on a shared 2-core machine: absolute times are slow and noisy",
        "  (other engineers' VMs and tests may run at the same time), the ratios are what the runs compare.",
        f"- The whole benchmark, boot included, took {total / 60:.1f} min; the host's 5-minute load average was",
        f"  {load[0]:.1f} at the start and {load[1]:.1f} at the end.",
        "",
        "Raw runs (seconds):",
        "",
        "```json",
        "{\n" + ",\n".join(f" {json.dumps(key)}: {json.dumps([round(v, 3) for v in values])}" for key, values in row.items()) + "\n}",
        "```",
        "",
    ]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines))
    log(f"wrote {REPORT}")


def vm_cli(*args: str, check: bool = True) -> None:
    subprocess.run([sys.executable, str(VM_PY), *args], cwd=ROOT, check=check)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    # 3 rounds keep the whole benchmark near 15 min on the shared 2-core host (the peer's loop takes 1-2 min a round)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    given = os.environ.get("KUBENODE_VM_INVENTORY")
    link = ROOT / "build" / "collections" / "ansible_collections" / "kubenode" / "dataplane"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(ROOT)
    inventory = Path(given).resolve() if given else OWN_INVENTORY
    try:
        if not given:
            log(f"booting a VM of its own ({inventory.relative_to(ROOT)})")
            vm_cli("up", "--inventory", str(inventory))
        machine = vmharness.VM.from_state(json.loads(vmharness.state_path(inventory).read_text()))
        node = Node(machine, inventory)
        kernel = node.sh("uname -r").strip()
        kmod = node.sh("modprobe --version | head -1").strip()
        info = (f"the real-kernel test VM (Debian 12, Linux {kernel}, {kmod}, QEMU TCG, 2 vCPUs, 1 GiB)\non a "
                f"{os.cpu_count()}-core {platform.machine()} host ({cpu_model()})")
        load_start = os.getloadavg()[1]
        row = bench(node, args.runs)
        command = "make bench BENCH=kmod   # boots its own VM, runs tests/bench/bench_kmod.py with .venv-bench"
        if args.runs != 3:
            command = f".venv-bench/bin/python tests/bench/bench_kmod.py --runs {args.runs}"
        write_report(row, info, command, time.monotonic() - started, (load_start, os.getloadavg()[1]))
    finally:
        if not given:
            vm_cli("down", "--inventory", str(inventory), check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
