"""Fixtures shared by every tier: netns test hosts and the real-kernel VM.

Both are always cleaned up (fixture finalisers, plus an atexit hook for a killed session).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

import pytest

from tests.harness import ansible_run
from tests.harness.netns_hosts import Lab
from tests.harness.vm import vm as vmharness

ROOT = Path(__file__).resolve().parents[1]


# unit tests import the collection as ansible_collections.kubenode.dataplane (see pytest.ini)
_LINK = ROOT / "build" / "collections" / "ansible_collections" / "kubenode" / "dataplane"
_LINK.parent.mkdir(parents=True, exist_ok=True)
if not _LINK.is_symlink():
    _LINK.symlink_to(ROOT)
    # the folder did not exist when Python cached its path finders
    for entry in [p for p in sys.path_importer_cache if p.rstrip("/").endswith("build/collections")]:
        del sys.path_importer_cache[entry]


def _lab(tmp_path_factory, count: int):
    if os.geteuid() != 0:
        pytest.skip("netns hosts need root")
    lab = Lab.create(count)
    atexit.register(lab.destroy)
    inv = lab.write_inventory(tmp_path_factory.mktemp("netns") / "inventory.yml", sys.executable)
    return lab, inv


@pytest.fixture(scope="module")
def netns_lab(tmp_path_factory):
    """Three netns hosts (h1, h2, h3) on one bridge; yields (lab, inventory path)."""
    lab, inv = _lab(tmp_path_factory, 3)
    try:
        yield lab, inv
    finally:
        lab.destroy()


@pytest.fixture
def netns_pair(tmp_path_factory):
    """Two fresh netns hosts for one test."""
    lab, inv = _lab(tmp_path_factory, 2)
    try:
        yield lab, inv
    finally:
        lab.destroy()


@pytest.fixture(scope="session")
def vm(tmp_path_factory):
    """One boot of the real-kernel VM for the whole session; yields (VM, inventory path).

    With KUBENODE_VM_INVENTORY set to the inventory of a VM started by `make vm-up`, that VM is
    used instead and left running.
    """
    given = os.environ.get("KUBENODE_VM_INVENTORY")
    if given:
        state = json.loads(Path(given + ".state.json").read_text())
        yield vmharness.VM.from_state(state), Path(given)
        return
    workdir = tmp_path_factory.mktemp("vm")
    machine = vmharness.start(workdir)
    atexit.register(machine.kill)
    inv = workdir / "inventory.yml"
    inv.write_text(json.dumps(machine.inventory(), indent=2))
    Path(str(inv) + ".state.json").write_text(json.dumps(machine.state()))
    try:
        yield machine, inv
    finally:
        machine.shutdown()


@pytest.fixture
def playbook():
    return ansible_run.playbook


@pytest.fixture
def adhoc():
    return ansible_run.adhoc
