"""The collection builds with ansible-galaxy, installs into a fresh collections path, and what
it installs is documented (ansible-doc reads every plugin from the installed copy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_build_install_and_document(tmp_path):
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"))
    env.pop("ANSIBLE_CONFIG", None)
    subprocess.run([BIN / "ansible-galaxy", "collection", "build", "--output-path", tmp_path, str(ROOT)],
                   check=True, capture_output=True, cwd=tmp_path, env=env)
    tarball = tmp_path / f"kubenode-dataplane-{version}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    # nothing of the development tree leaks into the artifact
    assert not [n for n in names if n.startswith((".venv", "build/", ".cache", "tests/output")) or "__pycache__" in n]
    assert "plugins/connection/netns.py" in names
    proc = subprocess.run([BIN / "ansible-galaxy", "collection", "install", "-p", tmp_path / "collections", tarball],
                          capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    installed = tmp_path / "collections" / "ansible_collections" / "kubenode" / "dataplane"
    assert json.loads((installed / "MANIFEST.json").read_text())["collection_info"]["version"] == version
    plugins = {
        "connection": sorted(p.stem for p in (installed / "plugins" / "connection").glob("*.py")),
        "module": sorted(p.stem for p in (installed / "plugins" / "modules").glob("*.py")),
        "filter": sorted(p.stem for p in (installed / "plugins" / "filter").glob("*.py")),
    }
    for kind, names_ in plugins.items():
        for name in names_:
            doc = subprocess.run([BIN / "ansible-doc", "-t", kind, "--json", f"kubenode.dataplane.{name}"],
                                 capture_output=True, text=True, cwd=tmp_path, env=env, check=False)
            assert doc.returncode == 0, doc.stderr
            data = json.loads(doc.stdout)[f"kubenode.dataplane.{name}"]
            assert data["doc"]["short_description"], f"{kind} {name} has no short_description"
            if kind == "module":
                assert data["examples"] and data["return"], f"module {name} lacks EXAMPLES or RETURN"
