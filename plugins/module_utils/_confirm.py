# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Commit-confirmed changes: restore the previous state by itself unless a later task confirms.

A change that may cut the connection Ansible uses is applied after a *rollback* is armed: a
restore file (for example an nft script) and a detached process that, after the timeout, claims
the file and runs the restore command. A later task confirms by claiming the file first. The
claim is an atomic rename, so exactly one of "rollback" and "confirm" wins, whatever the timing.

Why a double-forked process rather than only a systemd timer: the rollback must run in the
network namespace the change was made in. A process forked from the module inherits it, on a
plain host as in a container or a netns test host where no systemd runs inside the namespace,
while a systemd unit would run in PID 1's namespace. When systemd is PID 1 the process is
additionally moved into a transient scope of its own (``kubenode-rollback-<pid>.scope``), so
that the end of the SSH session it came from (logind's KillUserProcesses, sshd's session
teardown) cannot kill it, and ``systemctl list-units 'kubenode-rollback-*'`` shows it.

Used by the nft_ruleset module; generic in the restore command so that other ruleset modules
can arm the same kind of rollback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner

STATE_DIR = "/run/kubenode-dataplane/rollback"
SYSTEMD_MARK = "/run/systemd/system"


class RolledBack(DataplaneError):
    """The rollback ran before the change was confirmed."""


def netns_id() -> str:
    """Identity of the network namespace this process runs in (device and inode of its nsfs entry)."""
    st = os.stat("/proc/self/ns/net")
    return f"{st.st_dev}-{st.st_ino}"


def _start_time(pid: int) -> t.Optional[str]:
    """Start time of a process in clock ticks since boot: with the pid it names one process for good."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


class _Standalone:
    """What Runner needs from a module, for the detached process (the module has exited by then)."""

    def get_bin_path(self, name: str, required: bool = False, opt_dirs: t.Optional[t.List[str]] = None) -> t.Optional[str]:
        path = os.pathsep.join((opt_dirs or []) + [os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        return shutil.which(name, path=path)

    def run_command(self, argv, data=None, binary_data=False, environ_update=None, check_rc=False, expand_user_and_vars=False):
        env = dict(os.environ)
        env.update(environ_update or {})
        proc = subprocess.run(argv, input=data.encode() if data is not None else None, capture_output=True, env=env, check=False)
        return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


class Rollbacks:
    """Pending rollbacks of one network namespace, each under a key naming what it restores."""

    def __init__(self, runner: Runner, state_dir: str = STATE_DIR) -> None:
        self.runner = runner
        self.dir = os.path.join(state_dir, netns_id())

    def _paths(self, key: str) -> t.Dict[str, str]:
        base = os.path.join(self.dir, key)
        return {s: f"{base}.{s}" for s in ("json", "restore", "fired", "confirmed", "result")}

    def records(self) -> t.List[t.Dict[str, t.Any]]:
        found = []
        if not os.path.isdir(self.dir):
            return found
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(self.dir, name), encoding="utf-8") as f:
                        found.append(json.load(f))
                except (OSError, ValueError):
                    continue
        return found

    def pending(self, key: str) -> t.Optional[t.Dict[str, t.Any]]:
        paths = self._paths(key)
        if not os.path.exists(paths["json"]) or not os.path.exists(paths["restore"]):
            return None
        with open(paths["json"], encoding="utf-8") as f:
            return json.load(f)

    def arm(
        self,
        key: str,
        *,
        subject: t.List[str],
        restore_text: str,
        restore_argv: t.List[str],
        timeout: int,
        extra: t.Optional[t.Dict[str, t.Any]] = None,
    ) -> t.Dict[str, t.Any]:
        """Arm (or re-arm) the rollback of ``subject``; ``restore_argv + [file]`` runs after ``timeout`` seconds.

        When a rollback of the same key is already pending, its restore file (the last confirmed
        state) is kept and only the timer starts again: an unconfirmed change never becomes the
        state a later rollback returns to.
        """
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        paths = self._paths(key)
        previous = self.pending(key)
        if previous:
            self._stop(previous)
            if not os.path.exists(paths["restore"]):
                previous = None  # it fired just now: what it restored is the state to return to
        if not previous:
            for stale in ("fired", "confirmed", "result"):
                _unlink(paths[stale])
            tmp = paths["restore"] + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(restore_text)
            os.replace(tmp, paths["restore"])
        deadline = time.time() + timeout
        pid = _spawn(paths, restore_argv, timeout)
        record = {
            "key": key,
            "subject": list(subject),
            "armed_at": time.time() if not previous else previous["armed_at"],
            "deadline": deadline,
            "timeout": timeout,
            "pid": pid,
            "pid_start": _start_time(pid),
            "restore_file": paths["restore"],
            "mechanism": "detached process",
            "unit": None,
            "extra": dict(extra or (previous or {}).get("extra") or {}),
        }
        unit = self._adopt(pid)
        if unit:
            record["mechanism"] = "systemd scope"
            record["unit"] = unit
        tmp = paths["json"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, paths["json"])
        return record

    def _adopt(self, pid: int) -> t.Optional[str]:
        """Move the process into a transient systemd scope of its own, when systemd is PID 1."""
        if not os.path.isdir(SYSTEMD_MARK):
            return None
        busctl = self.runner.which("busctl", required=False)
        if not busctl:
            return None
        unit = f"kubenode-rollback-{pid}.scope"
        argv = [
            busctl, "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
            "StartTransientUnit", "ssa(sv)a(sa(sv))", unit, "fail", "2",
            "PIDs", "au", "1", str(pid),
            "Description", "s", "kubenode.dataplane: restores the previous ruleset unless the change is confirmed",
            "0",
        ]
        res = self.runner.run(argv, ok_rc=range(256), what="moving the rollback process into its own systemd scope")
        return unit if res.rc == 0 else None

    def _stop(self, record: t.Dict[str, t.Any]) -> None:
        pid = record.get("pid")
        if pid and record.get("pid_start") and _start_time(pid) == record["pid_start"]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def confirm(self, key: str) -> t.Optional[t.Dict[str, t.Any]]:
        """Cancel the pending rollback of ``key``; returns its record, None when nothing was pending.

        Raises RolledBack when the rollback already ran (and forgets it, so that the next run starts afresh).
        """
        paths = self._paths(key)
        record = None
        if os.path.exists(paths["json"]):
            with open(paths["json"], encoding="utf-8") as f:
                record = json.load(f)
        try:
            os.rename(paths["restore"], paths["confirmed"])
        except FileNotFoundError:
            if record is None or not os.path.exists(paths["fired"]) and not os.path.exists(paths["result"]):
                self._forget(paths)
                return None
            result = self._wait_result(paths)
            self._forget(paths)
            when = time.strftime("%H:%M:%S", time.localtime(result.get("at", record["deadline"])))
            outcome = "restored the previous state" if result.get("rc") == 0 else f"failed: {result.get('err', '').strip()}"
            raise RolledBack(
                f"the change to {', '.join(record['subject'])} was not confirmed within {record['timeout']} seconds: "
                f"the rollback ran at {when} and {outcome}; the unconfirmed change is not in force"
            ) from None
        self._stop(record or {})
        self._forget(paths)
        return record

    def _wait_result(self, paths: t.Dict[str, str], seconds: float = 15.0) -> t.Dict[str, t.Any]:
        # the rollback may be running right now: give it the time to finish and report
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if os.path.exists(paths["result"]):
                try:
                    with open(paths["result"], encoding="utf-8") as f:
                        return json.load(f)
                except ValueError:
                    pass
            time.sleep(0.1)
        return {"rc": None, "err": "no result was reported"}

    def _forget(self, paths: t.Dict[str, str]) -> None:
        for path in paths.values():
            _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _spawn(paths: t.Dict[str, str], restore_argv: t.List[str], timeout: int) -> int:
    """Double fork a process that runs the rollback after ``timeout`` seconds; returns its pid."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        os.waitpid(child, 0)
        with os.fdopen(read_end, "r") as pipe:
            told = pipe.read().strip()
        if not told.isdigit():
            raise DataplaneError("could not start the rollback process; nothing was changed")
        return int(told)
    # first child: a new session, so that the grandchild has no controlling terminal and no
    # session leader to be signalled with
    try:
        os.close(read_end)
        os.setsid()
        grandchild = os.fork()
        if grandchild:
            os.write(write_end, str(grandchild).encode())
            os._exit(0)
        os.close(write_end)
        _detach()
        _sleep_then_restore(paths, restore_argv, time.monotonic() + timeout)
    except BaseException:  # pylint: disable=broad-except
        pass
    # never return into the module: its exit handlers belong to the parent
    os._exit(0)


def _detach() -> None:
    os.chdir("/")
    os.umask(0o077)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    # the connection waits for every copy of the module's stdout to close
    os.closerange(3, 65536)


def _sleep_then_restore(paths: t.Dict[str, str], restore_argv: t.List[str], deadline: float) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, 1.0))
    try:
        os.rename(paths["restore"], paths["fired"])
    except FileNotFoundError:
        return  # confirmed meanwhile
    runner = Runner(_Standalone(), timeout=600)
    try:
        res = runner.run(list(restore_argv) + [paths["fired"]], ok_rc=range(256), what="rollback")
        outcome = {"rc": res.rc, "err": res.err[-2000:], "at": time.time()}
    except DataplaneError as exc:
        outcome = {"rc": None, "err": str(exc), "at": time.time()}
    tmp = paths["result"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(outcome, f)
    os.replace(tmp, paths["result"])
