"""Loads a captured dataplane_info scenario (tests/unit/fixtures/dataplane_info/<name>) for unit tests.

The fixtures are real tool output and real kernel files, captured by
tests/netns/capture_dataplane_info.py; see that script for how each was made.
"""

from __future__ import annotations

import gzip
import os
import shutil
import typing as t
from pathlib import Path

import yaml

from ansible_collections.kubenode.dataplane.plugins.module_utils._facts import Gatherer, NodeFiles
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import Runner

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dataplane_info"


def read(scenario: str, name: str) -> str:
    return (FIXTURES / scenario / name).read_text()


class CapturedModule:
    """Stands in for AnsibleModule: answers each command with what the real tool printed.

    Only commands the scenario captured can run; any other is a test failure.
    """

    def __init__(self, scenario: str, tools: t.Optional[t.Mapping[str, t.Optional[str]]] = None,
                 overrides: t.Optional[t.Mapping[t.Tuple[str, ...], t.Tuple[int, str, str]]] = None) -> None:
        meta = yaml.safe_load(read(scenario, "meta.yml"))
        self.tools = dict(meta["tools"])
        self.tools.update(tools or {})
        self.answers: t.Dict[t.Tuple[str, ...], t.Tuple[int, str, str]] = {}
        for entry in yaml.safe_load(read(scenario, "commands.yml")):
            self.answers[tuple(entry["argv"])] = (entry["rc"], read(scenario, entry["out"]), entry["err"])
        self.answers.update(overrides or {})

    def get_bin_path(self, name: str, required: bool = False, opt_dirs: t.Any = None) -> t.Optional[str]:
        return self.tools.get(name)

    def run_command(self, argv: t.List[str], **_kw: t.Any) -> t.Tuple[int, str, str]:
        key = (os.path.basename(argv[0]),) + tuple(argv[1:])
        if key not in self.answers:
            raise AssertionError(f"command not captured in this scenario: {argv}")
        return self.answers[key]


def root(scenario: str, dest: Path) -> Path:
    """The scenario's file tree under ``dest``, with its kernel config where it was read from."""
    tree = dest / "root"
    shutil.copytree(FIXTURES / scenario / "root", tree)
    meta = yaml.safe_load(read(scenario, "meta.yml"))
    config = (FIXTURES / scenario / "kernel-config.txt").read_bytes()
    target = tree / meta["kernel_config"].lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress(config) if target.name.endswith(".gz") else config)
    return tree


def refused(url: str, timeout: float) -> str:
    raise ConnectionRefusedError(111, "Connection refused")


def gatherer(scenario: str, dest: Path, fetch: t.Callable[[str, float], str] = refused,
             tools: t.Optional[t.Mapping[str, t.Optional[str]]] = None,
             overrides: t.Optional[t.Mapping[t.Tuple[str, ...], t.Tuple[int, str, str]]] = None,
             **options: t.Any) -> t.Tuple[Gatherer, Runner]:
    runner = Runner(CapturedModule(scenario, tools, overrides))
    return Gatherer(runner, NodeFiles(str(root(scenario, dest))), fetch, **options), runner


def history(runner: Runner) -> t.List[t.List[str]]:
    """The commands run, with program paths shortened to their names as in the YAML cases."""
    return [[os.path.basename(argv[0])] + argv[1:] for argv in runner.history]
