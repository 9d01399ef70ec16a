"""Runs the ansible-test style integration targets under tests/integration/targets.

Each target is a role-shaped folder (tasks/main.yml, optional defaults/, files/) with an
`aliases` file whose first word names its harness: `netns` (a fresh lab of two netns hosts,
h1 and h2, for each target) or `vm` (the session's real-kernel VM). A target follows the
community.crypto shape: check mode -> apply -> idempotent -> check again -> assert on the real
result; the assertions live in the target's own tasks, so a failed assert fails the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import ansible_run

TARGETS = Path(__file__).resolve().parent / "targets"


def targets(kind: str) -> list:
    found = []
    for aliases in sorted(TARGETS.glob("*/aliases")):
        words = aliases.read_text().split()
        if words and words[0] == kind and "disabled" not in words:
            found.append(pytest.param(aliases.parent, id=aliases.parent.name, marks=getattr(pytest.mark, kind)))
    return found


def run_target(target: Path, inventory: Path) -> None:
    play = [{
        "name": f"integration target {target.name}",
        "hosts": "all",
        "gather_facts": False,
        "roles": [{"role": str(target)}],
    }]
    run = ansible_run.playbook(play, inventory)
    assert run.rc == 0 and run.failed() == 0, run.explain()


@pytest.mark.parametrize("target", targets("netns"))
def test_netns_target(target, netns_pair):
    run_target(target, netns_pair[1])


@pytest.mark.parametrize("target", targets("vm"))
def test_vm_target(target, vm):
    run_target(target, vm[1])
