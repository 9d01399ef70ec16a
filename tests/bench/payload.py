"""Build modules' AnsiballZ payloads the way Ansible's controller does, and time it.

    .venv-bench/bin/python tests/bench/payload.py SPEC.json OUT_DIR RUNS

SPEC.json maps a name to {"module": FQCN, "args": {...}}. For every name, RUNS times (the modules
interleaved), ansible-core's modify_module() builds the payload from nothing: the module's
module_utils found by parsing their source, zipped, and the arguments embedded. Ansible does this once
per module and ansible-playbook run, before the first node runs it. The payload of the last build is
written to OUT_DIR/NAME.py, the file a node runs. Prints {name: {"build": median seconds, "size": bytes}}.

Runs in its own process, so that no earlier build in the bench is reused: Ansible keeps built
payloads in a directory of the run (DEFAULT_LOCAL_TMP/ansiballz_cache), emptied here before each build.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from ansible import constants as C
from ansible.executor.module_common import modify_module
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader, module_loader
from ansible.template import Templar


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out, runs = Path(sys.argv[2]), int(sys.argv[3])
    init_plugin_loader()
    templar = Templar(loader=DataLoader())
    task_vars = {"ansible_python_interpreter": sys.executable}
    paths = {name: module_loader.find_plugin_with_context(s["module"]).plugin_resolved_path for name, s in spec.items()}
    cache = Path(C.DEFAULT_LOCAL_TMP) / "ansiballz_cache"
    took: dict = {name: [] for name in spec}
    built: dict = {}
    for _run in range(runs):
        for name, s in spec.items():
            shutil.rmtree(cache, ignore_errors=True)
            start = time.perf_counter()
            built[name] = modify_module(module_name=s["module"], module_path=paths[name], module_args=s["args"],
                                        templar=templar, task_vars=task_vars,
                                        module_compression=C.config.get_config_value("DEFAULT_MODULE_COMPRESSION"))
            took[name].append(time.perf_counter() - start)
    result = {}
    for name, module in built.items():
        (out / f"{name}.py").write_bytes(module.b_module_data)
        result[name] = {"build": statistics.median(took[name]), "size": len(module.b_module_data)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
