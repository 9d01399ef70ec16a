"""`ansible-test sanity` on a copy of the collection placed where ansible-test wants it
(build/sanity/ansible_collections/kubenode/dataplane), one pytest result per sanity test.

The ignore files stay empty: a sanity finding is fixed in the code, never ignored.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.harness.sanity_copy import place

ROOT = Path(__file__).resolve().parents[2]
COPY = ROOT / "build" / "sanity" / "ansible_collections" / "kubenode" / "dataplane"
ANSIBLE_TEST = str(Path(sys.executable).parent / "ansible-test")
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _sync() -> None:
    place(COPY, "get_pip_24_2.py")


def _list_tests() -> list[str]:
    _sync()
    out = subprocess.run([ANSIBLE_TEST, "sanity", "--list-tests", "--python", PYTHON], cwd=COPY,
                         capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sanity_run():
    shutil.rmtree(COPY / "tests" / "output", ignore_errors=True)
    proc = subprocess.run(
        [ANSIBLE_TEST, "sanity", "--venv", "--python", PYTHON, "--junit", "--failure-ok", "--color", "no"],
        cwd=COPY, capture_output=True, text=True, check=False, env=dict(os.environ, ANSIBLE_TEST_PREFER_PODMAN="0"),
    )
    sys.stdout.write(proc.stdout[-4000:])
    return proc


def test_ignore_files_are_empty():
    for ignore in (ROOT / "tests" / "sanity").glob("ignore-*.txt"):
        assert ignore.read_text().strip() == "", f"{ignore} must stay empty: fix the code instead"


@pytest.mark.parametrize("name", _list_tests())
def test_sanity(name, sanity_run):
    assert sanity_run.returncode == 0, sanity_run.stdout[-3000:] + sanity_run.stderr[-3000:]
    reports = list((COPY / "tests" / "output" / "junit").glob(f"ansible-test-sanity-{name}*.xml"))
    assert reports, f"sanity test {name} left no result; output:\n{sanity_run.stdout[-2000:]}"
    problems = []
    for report in reports:
        for case in ET.parse(report).getroot().iter("testcase"):
            for bad in list(case.findall("failure")) + list(case.findall("error")):
                problems.append((bad.get("message") or "") + "\n" + (bad.text or ""))
    assert not problems, f"{name}:\n" + "\n".join(problems)
