# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Commit-confirmed changes: restore the previous state by itself unless a later task confirms.

A change that may cut the connection Ansible uses is applied after a *rollback* is armed: a
restore file (for example an nft script) and a detached process that, after the timeout, claims
the file and runs the restore command. A later task confirms by claiming the file first. The
claim is an atomic rename, so exactly one of "rollback" and "confirm" wins, whatever the timing.

The detached process is a small stdlib-only script (ROLLBACK_SCRIPT, written next to the state)
started through the Runner; it forks once into a new session, reports the pid and closes its
output, so the module returns at once. Why a process of our own rather than a systemd timer
unit: the rollback must run in the network namespace the change was made in. A process started
by the module inherits it - on a plain host, in a container, or in a netns test host where no
systemd runs inside the namespace - while a unit started by systemd runs in PID 1's namespace.
When systemd is PID 1 the script is started with ``systemd-run --scope`` (through systemd's
private socket, so no D-Bus daemon is needed): it then lives in a transient scope of its own,
``kubenode-rollback-*.scope``, out of the SSH session it came from, so the end of that session
(logind's KillUserProcesses, a restart of sshd) cannot kill it, and systemctl shows it.

Used by the nft_ruleset module; generic in the restore command so that other ruleset modules
can arm the same kind of rollback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner

STATE_DIR = "/run/kubenode-dataplane/rollback"
SYSTEMD_MARK = "/run/systemd/system"


# The detached process. Stdlib only, no shell: it must run after the module (and its temporary
# files) are gone. argv: RESTORE FIRED RESULT TIMEOUT COMMAND...; runs COMMAND... FIRED.
ROLLBACK_SCRIPT = '''\
"""kubenode.dataplane rollback: after a timeout, claim the restore file and run the restore command."""
import json
import os
import signal
import subprocess
import sys
import time


def main():
    restore, fired, result, timeout = sys.argv[1:5]
    command = sys.argv[5:]
    end = time.monotonic() + float(timeout)
    # detach: a new session, no terminal, output closed (the caller waits for it to close)
    if os.fork():
        os._exit(0)
    os.setsid()
    print(os.getpid(), flush=True)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.chdir("/")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while time.monotonic() < end:
        time.sleep(min(end - time.monotonic(), 1.0))
    try:
        os.rename(restore, fired)
    except FileNotFoundError:
        return  # confirmed meanwhile
    try:
        proc = subprocess.run(command + [fired], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, LC_ALL="C"), check=False)
        outcome = {"rc": proc.returncode, "err": proc.stderr[-2000:]}
    except (OSError, subprocess.SubprocessError) as exc:
        outcome = {"rc": None, "err": str(exc)}
    outcome["at"] = time.time()
    tmp = result + ".tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(outcome, f)
    os.replace(tmp, result)


if __name__ == "__main__":
    main()
'''


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
            _write_private(paths["restore"], restore_text)
        deadline = time.time() + timeout
        pid, unit = self._start(paths, restore_argv, timeout)
        record = {
            "key": key,
            "subject": list(subject),
            "armed_at": time.time() if not previous else previous["armed_at"],
            "deadline": deadline,
            "timeout": timeout,
            "pid": pid,
            "pid_start": _start_time(pid),
            "restore_file": paths["restore"],
            "mechanism": "systemd scope" if unit else "detached process",
            "unit": unit,
            "extra": dict(extra or (previous or {}).get("extra") or {}),
        }
        _write_private(paths["json"], json.dumps(record))
        return record

    def _script(self) -> str:
        path = os.path.join(os.path.dirname(self.dir), "rollback.py")
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == ROLLBACK_SCRIPT:
                    return path
        except FileNotFoundError:
            pass
        _write_private(path, ROLLBACK_SCRIPT)
        return path

    def _start(self, paths: t.Dict[str, str], restore_argv: t.List[str], timeout: int) -> t.Tuple[int, t.Optional[str]]:
        """Start the detached rollback process; returns its pid and its systemd scope, if any."""
        argv = [sys.executable, self._script(), paths["restore"], paths["fired"], paths["result"], str(timeout)] + list(restore_argv)
        if os.path.isdir(SYSTEMD_MARK):
            systemd_run = self.runner.which("systemd-run", required=False)
            if systemd_run:
                unit = f"kubenode-rollback-{os.path.basename(paths['restore']).split('.')[0]}-{os.urandom(3).hex()}.scope"
                res = self.runner.run(
                    [systemd_run, "--scope", "--quiet", f"--unit={unit}",
                     "--description=kubenode.dataplane: restores the previous ruleset unless the change is confirmed", "--"] + argv,
                    ok_rc=range(256), what="starting the rollback process in its own systemd scope",
                )
                if res.rc == 0 and res.out.strip().isdigit():
                    return int(res.out.strip()), unit
        res = self.runner.run(argv, what="starting the rollback process")
        told = res.out.strip()
        if not told.isdigit():
            raise DataplaneError(f"the rollback process did not start (it said {told!r}); nothing was changed")
        return int(told), None

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


def _write_private(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
