"""Molecule scenarios (delegated driver) of every role: roles/<role>/molecule/<scenario>.

Each scenario's molecule.yml names its harness in `platforms[0].groups` ("netns" or "vm");
create.yml and destroy.yml bring up and tear down the collection's own test hosts, so the
same scenarios run here, in CI and by hand (`cd roles/<role> && molecule test -s <scenario>`).
A scenario whose platform group is "cluster" needs KUBECONFIG and is skipped without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import ansible_run

ROOT = Path(__file__).resolve().parents[2]


def scenarios() -> list:
    found = []
    for cfg in sorted(ROOT.glob("roles/*/molecule/*/molecule.yml")):
        scenario = cfg.parent
        role = scenario.parent.parent
        groups = (yaml.safe_load(cfg.read_text()).get("platforms") or [{}])[0].get("groups", [])
        found.append(pytest.param(role, scenario.name, groups, id=f"{role.name}-{scenario.name}"))
    return found


@pytest.mark.parametrize("role,scenario,groups", scenarios())
def test_molecule_scenario(role, scenario, groups):
    if "cluster" in groups and not os.environ.get("KUBECONFIG"):
        pytest.skip("needs a real cluster: set KUBECONFIG")
    env = ansible_run.env()
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    env["MOLECULE_NO_LOG"] = "false"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "molecule"), "test", "-s", scenario],
        cwd=role, capture_output=True, text=True, env=env, check=False, timeout=1800, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
