"""The generated documentation (schemas for editors, ansible-doc reference) matches the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import gen_docs

ROOT = Path(__file__).resolve().parents[2]


def test_generated_docs_are_current():
    stale = [str(p.relative_to(ROOT)) for p, text in gen_docs.generate().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"run `make docs` and commit: {stale}"


def test_no_orphaned_reference_pages():
    wanted = set(gen_docs.generate())
    present = set((ROOT / "docs" / "reference").rglob("*.txt")) | set((ROOT / "docs" / "schemas").glob("*.json"))
    assert present <= wanted, f"pages without a plugin or schema behind them: {sorted(map(str, present - wanted))}"


def test_changelog_fragments_are_valid():
    proc = subprocess.run([str(Path(sys.executable).parent / "antsibull-changelog"), "lint"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
