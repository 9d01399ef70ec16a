# Test-only callback: records every task result as one JSON line in $KN_RECORD_FILE,
# so pytest can assert on changed/failed/diff of individual tasks.
from __future__ import annotations

DOCUMENTATION = """
name: kn_record
type: aggregate
short_description: record task results as JSON lines (tests only)
description: Writes one JSON object per task result to the file named by KN_RECORD_FILE.
requirements: [enabled in callbacks_enabled]
"""

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kn_record"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        path = os.environ.get("KN_RECORD_FILE")
        if not path:
            return
        res = dict(result._result)
        res.pop("invocation", None)
        line = {"host": result._host.get_name(), "task": result._task.get_name(), "status": status, "result": res}
        with open(path, "a") as f:
            f.write(json.dumps(line, default=str) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")
