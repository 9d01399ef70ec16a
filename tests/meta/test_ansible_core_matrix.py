"""The older ansible-core releases that meta/runtime.yml's requires_ansible admits: the unit tests on each,
and the sanity tests that depend on ansible-core's version on the oldest (import, compile, validate-modules,
runtime-metadata, ansible-doc, action-plugin-docs). The other tiers run on tests/requirements.txt's 2.19.

Each release gets a virtual environment of its own under build/ansible-core-<version>, installed once (a
second run installs nothing), with the test tools pinned as in tests/requirements.txt.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import venv
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.harness.sanity_copy import place

ROOT = Path(__file__).resolve().parents[2]
# the newest of each older release line that installs on this Python (pip index versions ansible-core)
VERSIONS = ["2.16.19", "2.17.14", "2.18.19"]
OLDEST = VERSIONS[0]
# what the unit tests import, pinned as for the 2.19 environment
TOOLS = ("pytest", "pyroute2", "jsonschema", "PyYAML")
SANITY = ["import", "compile", "validate-modules", "runtime-metadata", "ansible-doc", "action-plugin-docs"]
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _pins() -> list[str]:
    lines = (ROOT / "tests" / "requirements.txt").read_text().splitlines()
    pins = [ln.strip() for ln in lines if re.match(rf"({'|'.join(TOOLS)})==", ln.strip())]
    assert len(pins) == len(TOOLS), f"tests/requirements.txt pins {pins}, not all of {TOOLS}"
    return pins


def _env(bindir: Path) -> dict:
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}", ANSIBLE_TEST_PREFER_PODMAN="0")
    env.pop("ANSIBLE_CONFIG", None)
    return env


def environment(version: str) -> Path:
    """The bin folder of ansible-core ``version``'s virtual environment, installed when missing."""
    home = ROOT / "build" / f"ansible-core-{version}"
    wanted = "\n".join([f"ansible-core=={version}"] + _pins()) + "\n"
    marker = home / ".installed"
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists() or marker.read_text() != wanted:
            venv.create(home, with_pip=True, clear=True)
            subprocess.run([str(home / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
                           + wanted.split(), check=True, capture_output=True)
            marker.write_text(wanted)
    return home / "bin"


def test_requires_ansible_is_the_oldest_tested():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    assert runtime["requires_ansible"] == f">={'.'.join(OLDEST.split('.')[:2])}.0"


@pytest.mark.parametrize("version", VERSIONS)
def test_units(version):
    bindir = environment(version)
    proc = subprocess.run([str(bindir / "python"), "-m", "pytest", "-c", "tests/pytest.ini", "tests/unit", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, env=_env(bindir),
                          check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def oldest_sanity():
    bindir = environment(OLDEST)
    copy = ROOT / "build" / f"sanity-{OLDEST}" / "ansible_collections" / "kubenode" / "dataplane"
    # ansible-test 2.16 and 2.17 bootstrap pip 23.1.2 with get-pip.py
    place(copy, "get_pip_23_1_2.py")
    shutil.rmtree(copy / "tests" / "output", ignore_errors=True)
    tests = [a for name in SANITY for a in ("--test", name)]
    proc = subprocess.run([str(bindir / "ansible-test"), "sanity", "--venv", "--python", PYTHON, "--junit",
                           "--failure-ok", "--color", "no"] + tests, cwd=copy, capture_output=True, text=True,
                          env=_env(bindir), check=False, stdin=subprocess.DEVNULL)
    return copy, proc


@pytest.mark.parametrize("name", SANITY)
def test_sanity_on_the_oldest(name, oldest_sanity):
    copy, proc = oldest_sanity
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = list((copy / "tests" / "output" / "junit").glob(f"ansible-test-sanity-{name}*.xml"))
    assert reports, f"sanity test {name} left no result; output:\n{proc.stdout[-2000:]}"
    problems = [(bad.get("message") or "") + "\n" + (bad.text or "")
                for report in reports for case in ET.parse(report).getroot().iter("testcase")
                for bad in list(case.findall("failure")) + list(case.findall("error"))]
    assert not problems, f"{name} on ansible-core {OLDEST}:\n" + "\n".join(problems)
