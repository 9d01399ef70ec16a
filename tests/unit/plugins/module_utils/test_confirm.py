"""The commit-confirmed protocol with real detached processes (the restore command is a copy, not nft)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ansible_collections.kubenode.dataplane.plugins.module_utils import _confirm
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import Runner

COPY = [sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[1] + '.ran')"]


class Local:
    """Runs commands for real, as AnsibleModule.run_command would (no timeout wrapper, no systemd here)."""

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return None

    def run_command(self, argv, data=None, **_kw):
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False, timeout=30)
        return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def rollbacks(tmp_path, monkeypatch):
    monkeypatch.setattr(_confirm, "SYSTEMD_MARK", str(tmp_path / "no-systemd"))
    return _confirm.Rollbacks(Runner(Local()), str(tmp_path))


def wait_for(path, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not os.path.exists(path):
        time.sleep(0.05)
    return os.path.exists(path)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_rollback_runs_by_itself_and_a_late_confirm_says_so(rollbacks):
    rec = rollbacks.arm("k1", subject=["table inet a"], restore_text="old state\n", restore_argv=COPY, timeout=1)
    assert rec["mechanism"] == "detached process" and alive(rec["pid"]) and rec["pid"] != os.getpid()
    fired = rollbacks._paths("k1")["fired"]
    assert wait_for(fired + ".ran"), "the rollback did not run"
    with open(fired + ".ran", encoding="utf-8") as f:
        assert f.read() == "old state\n"
    with pytest.raises(_confirm.RolledBack, match=r"table inet a was not confirmed within 1 seconds: the rollback ran at .* and restored"):
        rollbacks.confirm("k1")
    assert rollbacks.confirm("k1") is None  # reported once, then forgotten


def test_confirm_in_time_cancels_and_stops_the_process(rollbacks):
    rec = rollbacks.arm("k2", subject=["table inet b"], restore_text="old\n", restore_argv=COPY, timeout=30)
    assert rollbacks.confirm("k2")["pid"] == rec["pid"]
    end = time.monotonic() + 5
    while alive(rec["pid"]) and time.monotonic() < end:
        time.sleep(0.05)
    assert not alive(rec["pid"])
    assert not [p for p in os.listdir(rollbacks.dir) if p.startswith("k2.")]
    assert rollbacks.confirm("k2") is None


def test_re_arming_keeps_the_last_confirmed_state(rollbacks):
    first = rollbacks.arm("k3", subject=["table inet c"], restore_text="confirmed\n", restore_argv=COPY, timeout=30)
    second = rollbacks.arm("k3", subject=["table inet c"], restore_text="unconfirmed\n", restore_argv=COPY, timeout=30)
    assert second["pid"] != first["pid"] and second["armed_at"] == first["armed_at"]
    with open(rollbacks._paths("k3")["restore"], encoding="utf-8") as f:
        assert f.read() == "confirmed\n"
    rollbacks.confirm("k3")
