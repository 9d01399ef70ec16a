"""Run ansible-playbook / ansible from tests and read back what each task did.

Playbooks run as users run them (ansible-playbook, the stock strategy); a test-only callback
(callback_plugins/kn_record.py) records each task result so that tests can assert on
changed, failed and diff of named tasks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    results: list[dict] = field(default_factory=list)

    def task(self, name: str, host: str | None = None) -> dict:
        """The result of the task called ``name`` (the last one, if it ran several times)."""
        found = [r for r in self.results if r["task"] == name and (host is None or r["host"] == host)]
        if not found:
            raise AssertionError(f"task {name!r} did not run; tasks seen: {sorted({r['task'] for r in self.results})}")
        return found[-1]

    def recap(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        in_recap = False
        for line in self.stdout.splitlines():
            if line.startswith("PLAY RECAP"):
                in_recap = True
                continue
            if in_recap and ":" in line:
                host, _sep, rest = line.partition(":")
                out[host.strip()] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
        return out

    def changed(self) -> int:
        return sum(h.get("changed", 0) for h in self.recap().values())

    def failed(self) -> int:
        return sum(h.get("failed", 0) + h.get("unreachable", 0) for h in self.recap().values())

    def explain(self) -> str:
        return f"rc={self.rc}\n--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-3000:]}"


def env() -> dict:
    e = dict(os.environ)
    e.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "build" / "collections"),
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "harness" / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="kn_record",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_DEPRECATION_WARNINGS="False",
        PATH=f"{BIN}:{e.get('PATH', '')}",
    )
    return e


def _collect(record: Path) -> list[dict]:
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def playbook(
    play: str | Path | list,
    inventory: str | Path,
    *,
    check: bool = False,
    diff: bool = False,
    extra_vars: dict | None = None,
    limit: str | None = None,
    forks: int | None = None,
    timeout: int = 1200,
    args: list[str] | None = None,
) -> Run:
    """Run a playbook given as a path, or as a list of plays (written to a temporary file)."""
    with tempfile.TemporaryDirectory(prefix="kn-play-") as tmp:
        if isinstance(play, list):
            path = Path(tmp) / "play.yml"
            path.write_text(yaml.safe_dump(play, sort_keys=False))
        else:
            path = Path(play)
        record = Path(tmp) / "record.jsonl"
        argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(path)]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        if extra_vars:
            argv += ["-e", json.dumps(extra_vars)]
        if limit:
            argv += ["--limit", limit]
        if forks:
            argv += ["--forks", str(forks)]
        argv += args or []
        e = env()
        e["KN_RECORD_FILE"] = str(record)
        proc = subprocess.run(argv, capture_output=True, text=True, env=e, cwd=ROOT, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
        return Run(proc.returncode, proc.stdout, proc.stderr, _collect(record))


def adhoc(inventory: str | Path, module: str, module_args: str | dict = "", pattern: str = "all", timeout: int = 600) -> Run:
    with tempfile.TemporaryDirectory(prefix="kn-adhoc-") as tmp:
        record = Path(tmp) / "record.jsonl"
        margs = json.dumps(module_args) if isinstance(module_args, dict) else module_args
        argv = [str(BIN / "ansible"), "-i", str(inventory), pattern, "-m", module]
        if margs:
            argv += ["-a", margs]
        e = env()
        e["KN_RECORD_FILE"] = str(record)
        e["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
        proc = subprocess.run(argv, capture_output=True, text=True, env=e, cwd=ROOT, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
        return Run(proc.returncode, proc.stdout, proc.stderr, _collect(record))
