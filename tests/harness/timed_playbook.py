"""One ansible-playbook run of a list of tasks, timed on the controller, for the benchmarks."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.harness import ansible_run

# run on the node as `python3 -c NODE_TIMER ARGV...`: the command's wall seconds and exit status on the first
# line, then its output, so a benchmark times a command where it runs, without SSH and the controller
NODE_TIMER = r"""
import subprocess, sys, time
started = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
elapsed = time.perf_counter() - started
sys.stderr.write(proc.stderr.decode(errors="replace")[-2000:])
sys.stdout.write(f"{elapsed:.4f} {proc.returncode}\n")
sys.stdout.write(proc.stdout.decode(errors="replace"))
"""


def timed_playbook(inventory: Path, tasks: list, args: list | None = None, keep: bool = False,
                   timeout: int = 1800) -> tuple[float, ansible_run.Run]:
    """Wall seconds of the whole run and its recorded results; ``keep`` leaves the AnsiballZ payloads on the
    node (no pipelining), so that a benchmark can time them there without the controller."""
    play = [{"name": "bench", "hosts": "all", "gather_facts": False, "tasks": tasks}]
    env_keep = {"ANSIBLE_KEEP_REMOTE_FILES": "1", "ANSIBLE_PIPELINING": "0"} if keep else {}
    saved = {k: os.environ.get(k) for k in env_keep}
    os.environ.update(env_keep)
    try:
        started = time.perf_counter()
        run = ansible_run.playbook(play, inventory, args=args or [], timeout=timeout)
        elapsed = time.perf_counter() - started
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if run.rc != 0:
        raise RuntimeError(run.explain())
    return elapsed, run
