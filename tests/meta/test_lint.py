"""ansible-lint, production profile, on every role and playbook; and the check (after
prometheus-community/ansible) that each role's defaults/main.yml holds exactly the options
of its meta/argument_specs.yml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import ansible_run

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p for p in (ROOT / "roles").glob("*") if (p / "tasks").is_dir())


def test_ansible_lint_production_profile():
    paths = [str(p.relative_to(ROOT)) for p in ROLES] + sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "playbooks").glob("*.yml"))
    if not paths:
        pytest.skip("no roles or playbooks yet")
    # ansible-lint installs the collection it lints into $ANSIBLE_HOME/collections and puts that first on the
    # collections path: a home of its own per checkout keeps a stale copy from another checkout from shadowing this one
    env = dict(ansible_run.env(), ANSIBLE_HOME=str(ROOT / "build" / "ansible-lint-home"))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-lint"), "--profile", "production", "--offline", "--nocolor"] + paths,
        cwd=ROOT, capture_output=True, text=True, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]


@pytest.mark.parametrize("role", ROLES, ids=[p.name for p in ROLES])
def test_role_defaults_match_argument_specs(role):
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults_file = role / "defaults" / "main.yml"
    defaults = (yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.exists() else {}
    with_default = {k for k, v in specs.items() if "default" in v}
    assert set(defaults) == with_default, (
        f"{role.name}: defaults/main.yml keys {sorted(defaults)} != argument_specs options with a default {sorted(with_default)}")
    for key in with_default:
        assert defaults[key] == specs[key]["default"], f"{role.name}: default of {key} differs between defaults and argument_specs"
    for key in specs:
        assert key.startswith(role.name + "_"), f"{role.name}: input {key} must be prefixed with the role name"
