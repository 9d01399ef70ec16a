"""The converge loop, driven with a real (file-backed) backend."""

from __future__ import annotations

import os

import pytest

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import Backend, VerifyError, converge
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError


class FileBackend(Backend):
    """Owns one file; the desired content is given; validate refuses the word 'bad'."""

    def __init__(self, path, wanted, corrupt=False):
        self.path, self.wanted, self.corrupt = path, wanted, corrupt
        self.calls = []

    def current(self):
        self.calls.append("current")
        return self.path.read_text() if self.path.exists() else None

    def desired(self, before):
        self.calls.append("desired")
        return self.wanted

    def validate(self, after):
        self.calls.append("validate")
        if "bad" in after:
            raise DataplaneError("line 1: 'bad' is not allowed; nothing was changed")

    def apply(self, before, after):
        self.calls.append("apply")
        self.path.write_text(after + ("!" if self.corrupt else ""))

    def result(self, before, after, changed):
        return {"content": after}


def test_apply_then_noop_writes_nothing(tmp_path):
    f = tmp_path / "owned"
    first = converge(FileBackend(f, "x\n"), check_mode=False, diff=True)
    assert first["changed"] and f.read_text() == "x\n"
    assert first["diff"] == {"before": "None", "after": "x\n"}
    mtime = os.stat(f).st_mtime_ns
    backend = FileBackend(f, "x\n")
    second = converge(backend, check_mode=False, diff=False)
    assert second == {"changed": False, "content": "x\n"}
    assert backend.calls == ["current", "desired"]
    assert os.stat(f).st_mtime_ns == mtime


def test_check_mode_validates_but_never_applies(tmp_path):
    f = tmp_path / "owned"
    backend = FileBackend(f, "bad\n")
    with pytest.raises(DataplaneError, match="nothing was changed"):
        converge(backend, check_mode=True, diff=False)
    assert not f.exists()
    backend = FileBackend(f, "good\n")
    assert converge(backend, check_mode=True, diff=False)["changed"]
    assert backend.calls == ["current", "desired", "validate"] and not f.exists()


def test_state_read_back_that_differs_fails_loudly(tmp_path):
    with pytest.raises(VerifyError, match="differs from the one applied"):
        converge(FileBackend(tmp_path / "owned", "x", corrupt=True), check_mode=False, diff=False)
