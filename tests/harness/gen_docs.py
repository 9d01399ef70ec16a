"""Generates the documentation that comes from the code itself, so it cannot drift:

- docs/schemas/*.schema.json from the schemas the collection validates with;
- docs/reference/<kind>s/<name>.txt, ansible-doc's own rendering of every module and plugin.

`make docs` runs it; tests/meta/test_docs.py fails when a committed file differs from what it makes.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "build" / "collections"))

# (module_utils module, attribute, published file); modules that publish a schema add themselves here
SCHEMAS = [
    ("_node_spec", "SCHEMA", "node.schema.json"),
    ("_fwmodel", "SCHEMA", "firewall.schema.json"),
    ("_iptables_rules", "SCHEMA", "iptables_ruleset.schema.json"),
    ("_kube_proxy_schema", "SCHEMA", "kube-proxy-config.v1alpha1.schema.json"),
    ("_nft_schema", "SCHEMA", "nft_ruleset.schema.json"),
]
KINDS = {"modules": "module", "connection": "connection", "filter": "filter", "lookup": "lookup", "inventory": "inventory"}


def schemas() -> dict[Path, str]:
    out = {}
    for mod, attr, name in SCHEMAS:
        m = importlib.import_module(f"ansible_collections.kubenode.dataplane.plugins.module_utils.{mod}")
        out[ROOT / "docs" / "schemas" / name] = json.dumps(getattr(m, attr), indent=2, sort_keys=True) + "\n"
    return out


def reference() -> dict[Path, str]:
    out = {}
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ROOT / "build" / "collections"), ANSIBLE_NOCOLOR="1",
               COLUMNS="100", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    ansible_doc = str(Path(sys.executable).parent / "ansible-doc")
    for folder, kind in KINDS.items():
        for path in sorted((ROOT / "plugins" / folder).glob("[!_]*.py")):
            text = subprocess.run([ansible_doc, "-t", kind, f"kubenode.dataplane.{path.stem}"], env=env,
                                  capture_output=True, text=True, check=True).stdout
            # ansible-doc prints where it found the plugin: that path is the reader's, not ours
            text = re.sub(r"\(/[^)]*/ansible_collections/kubenode/dataplane/", "(", text)
            out[ROOT / "docs" / "reference" / f"{kind}s" / f"{path.stem}.txt"] = text
    return out


def generate() -> dict[Path, str]:
    return {**schemas(), **reference()}


def main() -> int:
    for path, text in generate().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
