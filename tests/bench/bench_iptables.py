"""Benchmark: kubenode.dataplane.iptables_ruleset against raw iptables-restore/iptables-save and the
peers users pick (ansible.builtin.iptables in a loop, community.general.iptables_state).

    .venv-bench/bin/python tests/bench/bench_iptables.py [--runs 3] [--sizes 1000,10000,100000]

Everything runs in one throwaway network namespace on this machine (the host's own tables are never
touched), with the nft backend the machine's iptables command selects (and the module against raw
tools with the legacy backend too). Each figure is the median of --runs runs, taken in one go.

- raw restore: iptables-restore --noflush of one chain of N rules and its jump, into a namespace
  without it; raw save: iptables-save -t filter with the chain there.
- module apply / no-op: the module's own process (python + the module, run on the node as Ansible
  runs it, arguments in a file), from no chain to N rules / with the same N rules again.
- ansible-playbook figures: the whole `ansible-playbook` run of one task, controller included, which
  is what the peers are measured with.
- ansible.builtin.iptables loop: one task per rule; measured at --loop-rules (default 100) and scaled
  per rule to 1,000, because the real loop would take several minutes per run.
- community.general.iptables_state: state=restored of a file with the filter table holding the chain.
- a one-task play taken apart (below 100,000 rules): each module's payload built as ansible-core's
  controller builds it (tests/bench/payload.py), then that payload run on the node.
- with --before REV: the module's own process on the node of this tree against the one of git revision
  REV (a worktree), interleaved, for rules new to the machine (canonical_cache: false), the apply of
  remembered rules and the no-op, at each size.

Writes docs/performance/iptables.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / "build" / "collections"
BIN = Path(sys.executable).parent
CHAIN = "KUBENODE-BENCH"
MODULE = ROOT / "plugins" / "modules" / "iptables_ruleset.py"
# a module that only takes the same arguments and exits: what any module pays before its own work
FLOOR = ROOT / "tests" / "bench" / "library" / "kn_bench_floor.py"


def spec(i: int) -> str:
    # spelled as people write rules (no -m tcp, no /32): not as iptables-save prints them
    return f"-s 10.{i // 65536}.{(i // 256) % 256}.{i % 256} -p tcp --dport {1 + i % 60000} -j ACCEPT"


def rules_text(n: int) -> str:
    """The N rules as one text, one spec per line: the form that Ansible passes as one string."""
    return "\n".join(spec(i) for i in range(n)) + "\n"


def canonical(i: int) -> str:
    return f"-s 10.{i // 65536}.{(i // 256) % 256}.{i % 256}/32 -p tcp -m tcp --dport {1 + i % 60000} -j ACCEPT"


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = f"knbench{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        self.inventory = tmp / "inventory.json"
        self.inventory.write_text(json.dumps({"all": {"hosts": {"bench": {
            "ansible_connection": "kubenode.dataplane.netns", "ansible_netns_name": self.ns,
            "ansible_python_interpreter": sys.executable}}}}))
        self.env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1",
                        ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_DEPRECATION_WARNINGS="False",
                        ANSIBLE_CONFIG=str(tmp / "none.cfg"), PYTHONPATH=str(COLLECTIONS),
                        PATH=f"{BIN}:{os.environ.get('PATH', '')}")

        # more nodes for the fleet comparison: one play over several hosts, as operators run it
        self.fleet: list[str] = []
        self.fleet_inventory = tmp / "fleet.json"

    def make_fleet(self, hosts: int) -> None:
        for i in range(hosts - 1):
            ns = f"{self.ns}f{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            self.fleet.append(ns)
        self.fleet_inventory.write_text(json.dumps({"all": {"hosts": {
            ns: {"ansible_connection": "kubenode.dataplane.netns", "ansible_netns_name": ns,
                 "ansible_python_interpreter": sys.executable} for ns in self.namespaces(fleet=True)}}}))

    def namespaces(self, fleet: bool) -> list[str]:
        return [self.ns] + (self.fleet if fleet else [])

    def close(self) -> None:
        for ns in self.namespaces(fleet=True):
            subprocess.run(["ip", "netns", "del", ns], check=False)

    def run(self, argv: list[str], data: str | None = None, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        proc = subprocess.run(["ip", "netns", "exec", self.ns] + argv, input=data, capture_output=True, text=True,
                              env=self.env, check=False)
        took = time.perf_counter() - start
        if check and proc.returncode != 0:
            raise RuntimeError(f"{argv[:3]} failed: {proc.stderr[-2000:]}{proc.stdout[-2000:]}")
        return took, proc

    def clean(self, backend: str, fleet: bool = False) -> None:
        """Flush and delete the filter table's chains on the bench node (and, with ``fleet``, on the others)."""
        for ns in self.namespaces(fleet):
            for flag in ("-F", "-X"):
                subprocess.run(["ip", "netns", "exec", ns, f"iptables-{backend}", "-w", "-t", "filter", flag],
                               capture_output=True, check=False)

    def restore_text(self, n: int) -> str:
        lines = ["*filter", f":{CHAIN} - [0:0]"] + [f"-A {CHAIN} {canonical(i)}" for i in range(n)]
        return "\n".join(lines + [f"-I INPUT 1 -j {CHAIN}", "COMMIT", ""])

    def module_args(self, n: int, backend: str, check: bool = False, cache: bool = True, text: bool = False) -> Path:
        path = self.tmp / f"args-{n}-{backend}-{cache}-{text}.json"
        rules: t.Any = rules_text(n) if text else [spec(i) for i in range(n)]
        args = {"chains": [{"chain": CHAIN, "jump_from": ["INPUT"], "rules": rules}],
                "backend": backend, "_ansible_check_mode": check, "canonical_cache": cache}
        path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
        return path

    def module(self, args: Path, path: Path = MODULE, tree: Path = ROOT) -> tuple[float, dict]:
        # the module's module_utils come from the tree the module is of (this one, or --before's worktree)
        env = dict(self.env, PYTHONPATH=str(tree / "build" / "collections")) if tree != ROOT else None
        start = time.perf_counter()
        proc = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, str(path), str(args)],
                              capture_output=True, text=True, env=env or self.env, check=False)
        took = time.perf_counter() - start
        result = json.loads(proc.stdout)
        if result.get("failed"):
            raise RuntimeError(result.get("msg"))
        return took, result

    def payloads(self, modules: dict, runs: int) -> dict:
        """Each module's payload, built as Ansible's controller builds it, then run on the bench node.

        ``modules`` maps a name to (FQCN, literal arguments). The builds are timed in
        tests/bench/payload.py's own process (``NAME_build``); on the node a payload runs after a flush
        (``NAME_apply``) and once more (``NAME_noop``), the modules interleaved. Medians of ``runs``.
        """
        spec = self.tmp / "payloads.json"
        spec.write_text(json.dumps({name: {"module": fqcn, "args": args} for name, (fqcn, args) in modules.items()}))
        out = self.tmp / "payloads"
        out.mkdir(exist_ok=True)
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "bench" / "payload.py"), str(spec), str(out), str(runs)],
                              env=self.env, capture_output=True, text=True, check=True)
        built = json.loads(proc.stdout)
        res: dict = {f"{name}_build": b["build"] for name, b in built.items()}
        res.update({f"{name}_size": b["size"] for name, b in built.items()})
        took: dict = {}
        for _run in range(runs):
            for name in modules:
                self.clean("nft")
                for run in ("apply", "noop"):
                    seconds, proc = self.run([sys.executable, str(out / f"{name}.py")])
                    if json.loads(proc.stdout).get("failed"):
                        raise RuntimeError(f"{name} payload: {proc.stdout[-2000:]}")
                    took.setdefault(f"{name}_{run}", []).append(seconds)
        self.clean("nft")
        res.update({k: median(v) for k, v in took.items()})
        return res

    def playbook(self, tasks: list, vars_file: Path | None = None, fleet: bool = False) -> tuple[float, str]:
        play = [{"hosts": "all", "gather_facts": False, "tasks": tasks}]
        if vars_file:
            play[0]["vars_files"] = [str(vars_file)]
        path = self.tmp / "play.json"
        path.write_text(json.dumps(play))
        start = time.perf_counter()
        inventory = self.fleet_inventory if fleet else self.inventory
        proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(path)], env=self.env,
                              capture_output=True, text=True, check=False)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
        return took, proc.stdout


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def measure(b: Bench, sizes: list[int], runs: int, loop_rules: int, log, playbook_runs: int,
            fleet_hosts: int = 1) -> dict:
    res: dict = {"sizes": sizes, "runs": runs, "playbook_runs": playbook_runs, "loop_rules": loop_rules,
                 "fleet_hosts": fleet_hosts, "n": {}}
    if fleet_hosts > 1:
        b.make_fleet(fleet_hosts)
    for n in sizes:
        row: dict = {}
        text = b.restore_text(n)
        for backend in ("nft", "legacy"):
            raw_r, raw_s, mod_a, mod_n, mod_c, floor = [], [], [], [], [], []
            txt_a, txt_n, txt_floor = [], [], []
            args, cold = b.module_args(n, backend), b.module_args(n, backend, cache=False)
            as_text = b.module_args(n, backend, text=True)
            # one apply first, so that the rules are remembered (as after any earlier run of the same input)
            for first in (args, as_text):
                b.clean(backend)
                b.module(first)
            # the runs on the node take under a second each below 100,000 rules: as many as the playbook runs
            # there, so that one stall of the machine cannot move a median
            for _run in range(max(runs, playbook_runs) if n < 100000 else runs):
                b.clean(backend)
                raw_r.append(b.run([f"iptables-{backend}-restore", "-w", "--noflush"], data=text)[0])
                raw_s.append(b.run([f"iptables-{backend}-save", "-t", "filter"])[0])
                # rules new to the machine: their form learnt in a scratch namespace, the table read back in full
                b.clean(backend)
                took, result = b.module(cold)
                assert result["changed"] is True and result["verified"] == "re-read", result
                mod_c.append(took)
                b.clean(backend)
                took, result = b.module(args)
                assert result["changed"] is True
                assert result["verified"] == ("generation" if backend == "nft" else "re-read"), result
                mod_a.append(took)
                took, result = b.module(args)
                assert result["changed"] is False
                mod_n.append(took)
                took, result = b.module(args, FLOOR)
                assert result["changed"] is False
                floor.append(took)
                # the same rules as one text, one rule per line
                b.clean(backend)
                took, result = b.module(as_text)
                assert result["changed"] is True and result["chains"][0]["rules"] == n, result
                txt_a.append(took)
                took, result = b.module(as_text)
                assert result["changed"] is False
                txt_n.append(took)
                txt_floor.append(b.module(as_text, FLOOR)[0])
            b.clean(backend)
            row[backend] = {"raw_restore": median(raw_r), "raw_save": median(raw_s), "module_apply": median(mod_a),
                            "module_noop": median(mod_n), "module_apply_cold": median(mod_c), "floor": median(floor),
                            "text_apply": median(txt_a), "text_noop": median(txt_n), "text_floor": median(txt_floor)}
            log(f"N={n} {backend}: {row[backend]}")
        # the peers and the module through ansible-playbook (nft: the backend the iptables command selects)
        rules_file = b.tmp / f"rules-{n}.v4"
        rules_file.write_text(b.restore_text(n).replace(f"-I INPUT 1 -j {CHAIN}", f"-A INPUT -j {CHAIN}"))
        vars_file = b.tmp / f"vars-{n}.json"
        vars_file.write_text(json.dumps({"rules": [spec(i) for i in range(n)]}))
        # the text form as users would keep it: a file next to the playbook, read with the file lookup
        text_file = b.tmp / f"allow-{n}.rules"
        text_file.write_text(rules_text(n))
        module_task = {"name": "owned chain", "kubenode.dataplane.iptables_ruleset": {
            "backend": "nft", "chains": [{"chain": CHAIN, "jump_from": ["INPUT"], "rules": "{{ rules }}"}]}}
        text_task = {"name": "owned chain, text", "kubenode.dataplane.iptables_ruleset": {
            "backend": "nft", "chains": [{"chain": CHAIN, "jump_from": ["INPUT"],
                                          "rules": "{{ lookup('ansible.builtin.file', '%s') }}" % text_file}]}}
        state_task = {"name": "iptables_state", "community.general.iptables_state": {
            "state": "restored", "path": str(rules_file), "table": "filter"}}
        # as iptables_state is deployed: the rules file copied to the node first (it is not there on a new node)
        node_file = b.tmp / f"node-rules-{n}.v4"
        copy_tasks = [{"name": "rules file", "ansible.builtin.copy": {"src": str(rules_file), "dest": str(node_file),
                                                                      "mode": "0600"}},
                      dict(state_task, **{"community.general.iptables_state": dict(
                          state_task["community.general.iptables_state"], path=str(node_file))})]
        pb_a, pb_n, tx_a, tx_n, st_a, st_n, cp_a, cp_n = [], [], [], [], [], [], [], []
        # runs of a whole ansible-playbook vary more (controller start): more of them below 100,000 rules
        for _run in range(playbook_runs if n < 100000 else runs):
            b.clean("nft")
            pb_a.append(b.playbook([module_task], vars_file)[0])
            pb_n.append(b.playbook([module_task], vars_file)[0])
            b.clean("nft")
            tx_a.append(b.playbook([text_task])[0])
            tx_n.append(b.playbook([text_task])[0])
            b.clean("nft")
            st_a.append(b.playbook([state_task])[0])
            st_n.append(b.playbook([state_task])[0])
            b.clean("nft")
            node_file.unlink(missing_ok=True)
            cp_a.append(b.playbook(copy_tasks)[0])
            cp_n.append(b.playbook(copy_tasks)[0])
        b.clean("nft")
        row["playbook"] = {"module_apply": median(pb_a), "module_noop": median(pb_n), "text_apply": median(tx_a),
                           "text_noop": median(tx_n), "state_apply": median(st_a), "state_noop": median(st_n),
                           "copy_state_apply": median(cp_a), "copy_state_noop": median(cp_n)}
        log(f"N={n} playbook: {row['playbook']}")
        if fleet_hosts > 1 and n < 100000:
            # one play over several nodes: Ansible builds each module once per run, every node runs it
            fl = {"text_apply": [], "text_noop": [], "state_apply": [], "state_noop": []}
            for _run in range(playbook_runs):
                for name, task in (("text", text_task), ("state", state_task)):
                    b.clean("nft", fleet=True)
                    fl[f"{name}_apply"].append(b.playbook([task], fleet=True)[0])
                    fl[f"{name}_noop"].append(b.playbook([task], fleet=True)[0])
            b.clean("nft", fleet=True)
            row["fleet"] = {k: median(v) for k, v in fl.items()}
            log(f"N={n} fleet of {fleet_hosts}: {row['fleet']}")
        if n < 100000:
            # the one-task play taken apart: the payload built on the controller, then run on the node
            module = text_task["kubenode.dataplane.iptables_ruleset"]
            row["payload"] = b.payloads({
                "module": ("kubenode.dataplane.iptables_ruleset", dict(module, chains=[dict(module["chains"][0], rules=rules_text(n))])),
                "state": ("community.general.iptables_state", state_task["community.general.iptables_state"]),
                "ping": ("ansible.builtin.ping", {})}, playbook_runs)
            log(f"N={n} payloads: {row['payload']}")
        res["n"][n] = row
    # what any one task costs through ansible-playbook: controller start, a connection, a module that does nothing
    ping = [b.playbook([{"name": "ping", "ansible.builtin.ping": {}}])[0] for _run in range(playbook_runs)]
    res["ping"] = median(ping)
    log(f"one ping task: {res['ping']}")
    # ansible.builtin.iptables, one task per rule, as users write it
    loop_task = {"name": "builtin loop", "ansible.builtin.iptables": {
        "chain": CHAIN, "chain_management": True, "source": "{{ item.s }}", "protocol": "tcp",
        "destination_port": "{{ item.p }}", "jump": "ACCEPT"},
        "loop": [{"s": f"10.0.{i // 256}.{i % 256}", "p": str(1 + i)} for i in range(loop_rules)]}
    la, ln = [], []
    for _run in range(runs):
        b.clean("nft")
        b.run(["iptables-nft", "-w", "-N", CHAIN])
        la.append(b.playbook([loop_task])[0])
        ln.append(b.playbook([loop_task])[0])
    b.clean("nft")
    res["loop"] = {"apply": median(la), "noop": median(ln)}
    log(f"builtin loop at {loop_rules}: {res['loop']}")
    return res


def before_after(b: Bench, sizes: list[int], runs: int, rev: str, log) -> dict:
    """This tree's module against revision ``rev``'s, interleaved on the bench node (nft and legacy)."""
    old = b.tmp / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), rev], check=True, capture_output=True)
    link = old / "build" / "collections" / "ansible_collections" / "kubenode" / "dataplane"
    link.parent.mkdir(parents=True)
    link.symlink_to(old)
    trees = {"before": old, "after": ROOT}
    out: dict = {"rev": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True,
                                       text=True, check=True).stdout.strip(), "n": {}}
    try:
        for n in sizes:
            for backend in ("nft", "legacy"):
                args, cold = b.module_args(n, backend), b.module_args(n, backend, cache=False)
                took: dict = {t: {"cold": [], "apply": [], "noop": []} for t in trees}
                for tree in trees.values():  # the remembered form, as after any earlier run
                    b.clean(backend)
                    b.module(args, tree / "plugins" / "modules" / "iptables_ruleset.py", tree)
                for _run in range(runs if n < 100000 else 3):
                    for name, tree in trees.items():
                        module = tree / "plugins" / "modules" / "iptables_ruleset.py"
                        b.clean(backend)
                        took[name]["cold"].append(b.module(cold, module, tree)[0])
                        b.clean(backend)
                        took[name]["apply"].append(b.module(args, module, tree)[0])
                        took[name]["noop"].append(b.module(args, module, tree)[0])
                out["n"].setdefault(n, {})[backend] = {t: {k: median(v) for k, v in r.items()} for t, r in took.items()}
                log(f"N={n} {backend} before/after: {out['n'][n][backend]}")
                b.clean(backend)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False, capture_output=True)
    return out


def before_after_report(ba: dict) -> list[str]:
    lines = [
        "",
        f"## This revision against {ba['rev']}",
        "",
        f"The module's own process on the node, this tree and revision {ba['rev']} (a git worktree) interleaved, "
        "rules as a list; medians of 5 runs (3 at 100,000 rules). *new rules* = `canonical_cache: false`: the rules' iptables-save form worked out on every "
        "run; *apply* and *no-op* = rules remembered from an earlier run, as in the table above.",
        "",
        "| backend | N | new rules, before / after | ratio | apply, before / after | ratio | no-op, before / after | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in ("nft", "legacy"):
        for n, row in ba["n"].items():
            b, a = row[backend]["before"], row[backend]["after"]
            cells = " | ".join(f"{b[k]:.2f} s / {a[k]:.2f} s | {a[k] / b[k]:.2f}x" for k in ("cold", "apply", "noop"))
            lines.append(f"| {backend} | {int(n):,} | {cells} |")
    return lines


def vs_row(n: int, r: dict, mine: str, peer: str) -> str:
    """A table row: the module's apply and no-op (keys ``mine_apply``/``mine_noop``), the peer's, and the ratios."""
    return (f"| {n:,} | {r[mine + '_apply']:.2f} s | {r[mine + '_noop']:.2f} s | {r[peer + '_apply']:.2f} s | "
            f"{r[peer + '_noop']:.2f} s | {r[peer + '_apply'] / r[mine + '_apply']:.2f}x / "
            f"{r[peer + '_noop'] / r[mine + '_noop']:.2f}x |")


def slower_at(rows: dict, mine: str, peer: str) -> list:
    """'N apply' / 'N no-op' wherever the module is not faster than the peer."""
    return [f"{n:,} {label}" for n, r in rows.items() for run, label in (("apply", "apply"), ("noop", "no-op"))
            if r[f"{mine}_{run}"] >= r[f"{peer}_{run}"]]


def report(res: dict, started: dict, ended: dict, command: str) -> str:
    sizes = res["sizes"]
    lines = [
        "# iptables_ruleset",
        "",
        f"Measured {started['date']} on {started['machine']} ({started['cpus']} CPUs, kernel {started['kernel']}, "
        f"{started['iptables']}); load average {started['load']} at the start and {ended['load']} at the end "
        "(other work shared the machine). "
        f"Medians of {res['runs']} runs each at 100,000 rules and of {max(res['runs'], res['playbook_runs'])} below, "
        "all in one go, in a throwaway network namespace.",
        "",
        "Reproduce:",
        "",
        "```sh",
        command,
        "```",
        "",
        "## The module against the raw tools",
        "",
        "Module = the module's own process on the node: Python start, Ansible's argument handling, the read with "
        "`iptables-save`, the rules in iptables-save's form, one `iptables-restore --noflush` (a one-table change "
        "needs no `--test` first: the restore commits all of it or none), then the verification. Rules are spelled "
        "as people write them (`-s 10.0.0.1 -p tcp --dport 22 -j ACCEPT`). *apply* is a later run of rules the module "
        "has already seen printed back on this machine. It takes their iptables-save form from its cache, and with "
        "the nft backend it verifies by the nf_tables generation (legacy has none and reads back). *apply, new rules* "
        "(`canonical_cache: false`) learns their iptables-save form in a scratch network namespace (restored there "
        "with the same program, read back) and reads the table back in full after the apply. "
        "Raw = `iptables-restore --noflush` of the same chain already in iptables-save's form / `iptables-save -t filter`.",
        "",
        "*Ansible floor* = a module that takes the same arguments and exits at once (tests/bench/library/kn_bench_floor.py): "
        "Python start, Ansible's imports, reading the N rules and echoing them back in `invocation`. Every module pays it "
        "before its own work.",
        "",
        "*list* = `rules` as a list of N strings; *text* = `rules` as one text of N lines (the same rules). Ansible "
        "checks, copies and echoes a list item by item, a text as one string.",
        "",
        "| backend | N | raw restore | apply, list | apply, text | target (2x raw + 0.5 s) | | apply, new rules (list) "
        "| raw save | no-op, list | no-op, text | target (2x raw + 0.5 s) | | floor, list / text |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]

    def verdict(list_time: float, text_time: float, target: float) -> str:
        if list_time <= target and text_time <= target:
            return "met"
        return "met with text" if text_time <= target else "MISSED"

    for backend in ("nft", "legacy"):
        for n in sizes:
            r = res["n"][n][backend]
            ta, tn = 2 * r["raw_restore"] + 0.5, 2 * r["raw_save"] + 0.5
            lines.append(
                f"| {backend} | {n:,} | {r['raw_restore']:.2f} s | {r['module_apply']:.2f} s | {r['text_apply']:.2f} s | "
                f"{ta:.2f} s | {verdict(r['module_apply'], r['text_apply'], ta)} | {r['module_apply_cold']:.2f} s | "
                f"{r['raw_save']:.2f} s | {r['module_noop']:.2f} s | {r['text_noop']:.2f} s | {tn:.2f} s | "
                f"{verdict(r['module_noop'], r['text_noop'], tn)} | {r['floor']:.2f} s / {r['text_floor']:.2f} s |")
    loop_n = res["loop_rules"]
    per_rule_a, per_rule_n = res["loop"]["apply"] / loop_n, res["loop"]["noop"] / loop_n
    lines += [
        "",
        "## Against the peers, through ansible-playbook",
        "",
        "Whole `ansible-playbook` runs of one task (controller start included), nft backend. The module gets its rules "
        "as a list from a vars file (*list*), or as a text from a file next to the playbook through "
        "`lookup('ansible.builtin.file', ...)` (*text*); iptables_state gets the path of an iptables-save file on the node.",
        f"`ansible.builtin.iptables` was run as a loop of {loop_n} tasks (one per rule): {res['loop']['apply']:.1f} s "
        f"to add them, {res['loop']['noop']:.1f} s for the run that changes nothing, i.e. "
        f"{per_rule_a:.3f} s and {per_rule_n:.3f} s per rule. **The 1,000-rule figures below are that per-rule time "
        "times 1,000 (extrapolated, not measured)**: a real 1,000-task loop takes several minutes per run.",
        "",
        "| N | module apply, list / text | module no-op, list / text | iptables_state apply | iptables_state no-op | "
        "builtin loop apply | builtin loop no-op | vs loop, list (apply / no-op) | vs iptables_state, list (apply / no-op) "
        "| vs iptables_state, text (apply / no-op) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        p = res["n"][n]["playbook"]
        loop_a = f"{per_rule_a * n:.0f} s (extrap.)" if n == 1000 else "-"
        loop_nn = f"{per_rule_n * n:.0f} s (extrap.)" if n == 1000 else "-"
        vs_loop = (f"{per_rule_a * n / p['module_apply']:.0f}x / {per_rule_n * n / p['module_noop']:.0f}x"
                   if n == 1000 else "-")
        lines.append(
            f"| {n:,} | {p['module_apply']:.2f} s / {p['text_apply']:.2f} s | {p['module_noop']:.2f} s / "
            f"{p['text_noop']:.2f} s | {p['state_apply']:.2f} s | {p['state_noop']:.2f} s | {loop_a} | {loop_nn} | "
            f"{vs_loop} | {p['state_apply'] / p['module_apply']:.2f}x / {p['state_noop'] / p['module_noop']:.2f}x | "
            f"{p['state_apply'] / p['text_apply']:.2f}x / {p['state_noop'] / p['text_noop']:.2f}x |")
    copied = [n for n in sizes if "copy_state_apply" in res["n"][n]["playbook"]]
    if copied:
        lines += [
            "",
            "### iptables_state as it is deployed",
            "",
            "iptables_state restores a file that must be on the node. Above, the file was put there beforehand, for free. "
            "Here the play copies it first with `ansible.builtin.copy` (a new file on the apply run, an unchanged one on the "
            "no-op run), then restores it: two tasks, the way it is used.",
            "",
            "| N | module apply, text | module no-op, text | copy + iptables_state apply | copy + iptables_state no-op | "
            "vs copy + iptables_state (apply / no-op) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [vs_row(n, res["n"][n]["playbook"], "text", "copy_state") for n in copied]
    fleet = [n for n in sizes if "fleet" in res["n"][n]]
    if fleet:
        k = res["fleet_hosts"]
        lines += [
            "",
            f"### One play over {k} nodes",
            "",
            f"The same tasks in one `ansible-playbook` run against {k} network namespaces at once (forks 5), as operators "
            "run a role over their nodes: Ansible builds a module's payload once per run, and every node runs it. "
            "The module gets its rules as a text.",
            "",
            "| N | module apply | module no-op | iptables_state apply | iptables_state no-op | vs iptables_state (apply / no-op) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [vs_row(n, res["n"][n]["fleet"], "text", "state") for n in fleet]
    parts = [n for n in sizes if "payload" in res["n"][n]]
    if parts:
        lines += [
            "",
            "### A one-task play taken apart",
            "",
            "The two parts of a one-task play that depend on the module, each measured on its own and the modules "
            "interleaved, which varies much less than whole `ansible-playbook` runs. *Build*: ansible-core's "
            "`modify_module()` making the payload on the controller, once per module and run (it parses the source "
            "of every module_utils file the module imports, zips them and embeds the arguments; "
            "`tests/bench/payload.py`). *On the node*: that payload run in the namespace from a file, as Ansible runs it without pipelining, after a "
            "flush (apply) and again (no-op). The module gets its rules as a text; `ansible.builtin.ping` shows what "
            "any module costs.",
            "",
            "| N | build: module / iptables_state / ping | payload size: module / iptables_state | "
            "on the node, apply: module / iptables_state | on the node, no-op: module / iptables_state | ping on the node |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for n in parts:
            q = res["n"][n]["payload"]
            lines.append(f"| {n:,} | {q['module_build']:.3f} / {q['state_build']:.3f} / {q['ping_build']:.3f} s | "
                         f"{q['module_size'] / 1000:.0f} / {q['state_size'] / 1000:.0f} KB | "
                         f"{q['module_apply']:.3f} / {q['state_apply']:.3f} s | {q['module_noop']:.3f} / {q['state_noop']:.3f} s | "
                         f"{q['ping_apply']:.3f} s |")
    if "before_after" in res:
        lines += before_after_report(res["before_after"])
    lines += ["", "## Targets", ""]
    p1 = res["n"][1000]["playbook"] if 1000 in res["n"] else None
    if p1:
        ra, rn = per_rule_a * 1000 / p1["module_apply"], per_rule_n * 1000 / p1["module_noop"]
        lines.append(f"- At least 100x faster than the `ansible.builtin.iptables` loop at N = 1,000, both runs: "
                     f"{ra:.0f}x and {rn:.0f}x with the list (against the extrapolated loop) - "
                     f"{'met' if min(ra, rn) >= 100 else 'MISSED'}.")
    for form, key in (("list", "module"), ("text", "text")):
        slower = slower_at({n: res["n"][n]["playbook"] for n in sizes}, key, "state")
        lines.append(f"- Faster than `community.general.iptables_state` at every N, both runs, rules as a {form}: "
                     + ("met." if not slower else f"MISSED ({', '.join(slower)})."))
    if copied:
        slower = slower_at({n: res["n"][n]["playbook"] for n in copied}, "text", "copy_state")
        lines.append("  Against iptables_state with the copy of its file (as it is deployed), rules as a text: "
                     + ("faster at every N, both runs." if not slower else f"slower at {', '.join(slower)}."))
    if fleet:
        slower = slower_at({n: res["n"][n]["fleet"] for n in fleet}, "text", "state")
        lines.append(f"  Over {res['fleet_hosts']} nodes in one play, rules as a text: "
                     + ("faster at every N measured, both runs." if not slower else f"slower at {', '.join(slower)}."))
    for n in parts:
        q = res["n"][n]["payload"]
        lines.append(f"  At {n:,} rules, taken apart: building the module's payload costs {q['module_build'] - q['state_build']:+.3f} s "
                     f"against iptables_state's, once per play; on the node the module's payload takes "
                     f"{q['module_apply'] - q['state_apply']:+.3f} s (apply) and {q['module_noop'] - q['state_noop']:+.3f} s "
                     "(no-op) against iptables_state's, on every node.")
    lines.append("  iptables_state also flushes the whole filter table on every run, other owners' rules and counters "
                 "included; the module writes nothing on the no-op run.")
    if "ping" in res:
        ping = res["ping"]
        lines.append(f"  A play of one `ansible.builtin.ping` task takes {ping:.2f} s here: what any task costs before its own "
                     "work. Above it, per N (apply / no-op): " + "; ".join(
                         f"{n:,}: module with text {res['n'][n]['playbook']['text_apply'] - ping:+.2f} s / "
                         f"{res['n'][n]['playbook']['text_noop'] - ping:+.2f} s, iptables_state "
                         f"{res['n'][n]['playbook']['state_apply'] - ping:+.2f} s / "
                         f"{res['n'][n]['playbook']['state_noop'] - ping:+.2f} s" for n in sizes) + ".")
    for backend in ("nft", "legacy"):
        for form, a_key, n_key in (("list", "module_apply", "module_noop"), ("text", "text_apply", "text_noop")):
            ok_a = all(res["n"][n][backend][a_key] <= 2 * res["n"][n][backend]["raw_restore"] + 0.5 for n in sizes)
            ok_n = all(res["n"][n][backend][n_key] <= 2 * res["n"][n][backend]["raw_save"] + 0.5 for n in sizes)
            lines.append(f"- {backend}, rules as a {form}: module apply <= 2x raw restore + 0.5 s at every N: "
                         f"{'met' if ok_a else 'MISSED (see the table)'}; no-op <= 2x raw save + 0.5 s: "
                         f"{'met' if ok_n else 'MISSED (see the table)'}.")
    lines.append("")
    return "\n".join(lines)


def machine() -> dict:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = subprocess.run(["iptables-nft", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"date": datetime.date.today().isoformat(), "machine": cpu, "cpus": os.cpu_count(),
            "kernel": platform.release(), "iptables": version,
            "load": " ".join(Path("/proc/loadavg").read_text().split()[:3])}


def log_line(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--loop-rules", type=int, default=100)
    parser.add_argument("--playbook-runs", type=int, default=5, help="runs of the ansible-playbook comparisons below 100,000 rules")
    parser.add_argument("--fleet-hosts", type=int, default=4,
                        help="nodes of the one-play fleet comparison below 100,000 rules (1: none)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "performance" / "iptables.md")
    parser.add_argument("--before", default="", help="also measure the module of this git revision, interleaved")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 1
    link = COLLECTIONS / "ansible_collections" / "kubenode" / "dataplane"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(ROOT)
    sizes = [int(s) for s in args.sizes.split(",")]
    started = machine()
    with tempfile.TemporaryDirectory(prefix="kn-bench-ipt-") as tmp:
        b = Bench(Path(tmp))
        try:
            res = measure(b, sizes, args.runs, args.loop_rules, log_line, args.playbook_runs, args.fleet_hosts)
            if args.before:
                res["before_after"] = before_after(b, sizes, 5, args.before, log_line)
        finally:
            b.close()
    ended = machine()
    command = (f"{os.path.relpath(sys.executable, ROOT)} tests/bench/bench_iptables.py --runs {args.runs} --sizes {args.sizes} "
               f"--loop-rules {args.loop_rules} --playbook-runs {args.playbook_runs} --fleet-hosts {args.fleet_hosts}"
               + (f" --before {args.before}" if args.before else ""))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report(res, started, ended, command))
    raw = ROOT / "build" / "bench" / "iptables.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(res, indent=1) + "\n")
    print(args.output, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
