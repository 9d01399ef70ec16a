"""The collection copied where ansible-test wants it (.../ansible_collections/kubenode/dataplane), for the
sanity tier and the ansible-core matrix alike."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXCLUDE = [".git", ".venv", ".venv-bench", "build", ".cache", "tests/output", "__pycache__", ".pytest_cache", ".ansible"]


def place(copy: Path, get_pip: str) -> None:
    """Sync the tree into ``copy`` (a git repository of its own) and put our get-pip stand-in where ansible-test
    looks for ``get_pip``: it fetches get-pip.py from a host these machines cannot reach."""
    argv = ["rsync", "-a", "--delete"] + [f"--exclude=/{e}" if "/" in e or e.startswith(".") else f"--exclude={e}" for e in EXCLUDE]
    copy.mkdir(parents=True, exist_ok=True)
    subprocess.run(argv + [f"{ROOT}/", f"{copy}/"], check=True)
    # ansible-test lists files through git; the copy lives under the checkout's ignored build/ folder
    if not (copy / ".git").exists():
        subprocess.run(["git", "init", "-q", str(copy)], check=True)
    subprocess.run(["git", "-C", str(copy), "add", "-A"], check=True)
    cache = Path.home() / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tests" / "sanity" / "get_pip_bootstrap.py", cache / get_pip)
