"""Run one of the collection's modules many times in one process, as a node runs it for each task.

For corpora of hundreds of inputs, where an ansible-playbook task per input would cost a round trip each:
the module's own main() runs with its arguments handed to AnsibleModule the way ansible-playbook hands them
(ANSIBLE_MODULE_ARGS), so the argument spec, check mode, the backend and the real tools all run as in a
play. Only the controller's side (templating, connection, callbacks) is left out.

Reads a JSON list of {"module": NAME, "args": {...}, "check_mode": bool} on stdin; writes a JSON list of the
modules' results. Run it inside a netns host (``ip netns exec``): what the module changes is that host's.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "build" / "collections"))

from ansible.module_utils import basic  # noqa: E402


def run(module: str, args: dict, check_mode: bool = False) -> dict:
    main = importlib.import_module(f"ansible_collections.kubenode.dataplane.plugins.modules.{module}").main
    basic._ANSIBLE_ARGS = json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode)}).encode()
    basic._ANSIBLE_PROFILE = "legacy"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit:
            pass
    text = out.getvalue()
    try:
        return json.loads(text[text.index("{"):])
    except ValueError:
        return {"failed": True, "msg": f"the module printed no result: {text!r}"}


if __name__ == "__main__":
    calls = json.load(sys.stdin)
    json.dump([run(c["module"], c["args"], c.get("check_mode", False)) for c in calls], sys.stdout)
