"""Support for the kernel_module unit tests: import path of the collection, captured roots,
and a stand-in for AnsibleModule that replays captured command output (community.general's
YAML-driven style: every command the backend runs is listed, with its real captured output)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kmod"
COLLECTIONS = ROOT / "build" / "collections"

_link = COLLECTIONS / "ansible_collections" / "kubenode" / "dataplane"
if not _link.exists():
    _link.parent.mkdir(parents=True, exist_ok=True)
    _link.symlink_to(ROOT)
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

BIN = "/usr/sbin"
# the module's defaults, as AnsibleModule fills them in
DEFAULTS = {"name": None, "modules": None, "state": None, "params": None, "persistent": None, "reload": False,
            "ignore_builtin": False, "prefix": "kubenode-dataplane"}
ENTRY_DEFAULTS = {"state": None, "params": None, "persistent": None, "reload": None, "ignore_builtin": None}


def module_params(args: dict) -> dict:
    params = dict(DEFAULTS)
    params.update(args)
    if params.get("modules"):
        params["modules"] = [dict(ENTRY_DEFAULTS, **m) for m in params["modules"]]
    return params


def make_root(tmp: Path, snapshot: str, etc: dict | None = None) -> Path:
    """A copy of a captured kernel snapshot (proc, sys, lib) plus the given /etc files."""
    root = tmp / "root"
    shutil.copytree(FIXTURES / snapshot, root, symlinks=True)
    if not (root / "lib").exists() and (FIXTURES / "vm-6.1-boot" / "lib").exists() and snapshot.startswith("vm-"):
        # later VM snapshots share the release files of the first one
        shutil.copytree(FIXTURES / "vm-6.1-boot" / "lib", root / "lib")
    for path, text in (etc or {}).items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    return root


def switch_kernel_state(root: Path, snapshot: str) -> None:
    """What the kernel shows after a command: /proc/modules and /sys/module of a later capture."""
    src = FIXTURES / snapshot
    shutil.copy(src / "proc" / "modules", root / "proc" / "modules")
    shutil.rmtree(root / "sys" / "module")
    shutil.copytree(src / "sys" / "module", root / "sys" / "module")


def capture(name: str) -> tuple[int, str, str]:
    base = FIXTURES / "vm-6.1-cmd" / name
    return int((base.with_suffix(".rc")).read_text()), base.with_suffix(".out").read_text(), base.with_suffix(".err").read_text()


class FakeModule:
    """Just what the Runner and the backend use of AnsibleModule; run_command checks each argv
    against the next expected command and answers with that command's captured output."""

    def __init__(self, params: dict, root: Path, commands: list, check_mode: bool = False, diff: bool = True) -> None:
        self.params = params
        self.root = root
        self.expected = list(commands)
        self.ran: list[list[str]] = []
        self.check_mode = check_mode
        self._diff = diff
        self.warnings: list[str] = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        # no coreutils timeout wrapper, so that argv lists read as the commands themselves
        return None if name == "timeout" else f"{BIN}/{name}"

    def run_command(self, argv, data=None, binary_data=False, environ_update=None, check_rc=False, expand_user_and_vars=True):
        assert isinstance(argv, list), f"commands must be argv lists, got {argv!r}"
        assert (environ_update or {}).get("LC_ALL") == "C"
        self.ran.append(list(argv))
        assert self.expected, f"unexpected command {argv}; ran so far: {self.ran[:-1]}"
        want = self.expected.pop(0)
        assert argv == want["argv"], f"expected {want['argv']}, got {argv}"
        captured = want["capture"]
        # captures were made with bare program names; the argv must be the same command
        recorded = (FIXTURES / "vm-6.1-cmd" / f"{captured}.argv").read_text().split()
        assert [os.path.basename(argv[0])] + argv[1:] == recorded, f"capture {captured} was made with {recorded}, not {argv}"
        rc, out, err = capture(captured)
        if want.get("then"):
            switch_kernel_state(self.root, want["then"])
        return rc, out, err

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)

    def atomic_move(self, src: str, dest: str) -> None:
        os.replace(src, dest)
