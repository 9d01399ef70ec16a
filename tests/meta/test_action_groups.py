"""The action groups of meta/runtime.yml hold modules that take the group's options alike: module_defaults
for a group gives every option to every module of the group, and a module that does not take one fails.
The options each group is for are those docs/guides/awx-aap.md lists; every other option its modules
share is named here with the reason it is not one. That the defaults reach the modules in a real play is
tests/integration/targets/action_groups (netns tier)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import ansible_run

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "awx-aap.md"
GROUPS = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())["action_groups"]
# the options of each group, as the guide lists them
OPTIONS = {
    "dataplane": set(),   # kernel_module alone, kept as it was
    "iptables": {"backend", "wait"},
    "netfilter": {"force", "canonical_cache", "persist"},
    "ipvs": {"kube_proxy_interface"},
    "kube_proxy": {"mode"},
}
# shared by the modules of a group, but not an option for the group
NOT_FOR_THE_GROUP = {
    "netfilter": {
        "confirm",           # a rollback's token for iptables_ruleset, true or false for nft_ruleset
        "confirm_timeout",   # iptables_ruleset confirms by itself, nft_ruleset waits for a task with confirm
        "persist_dir",       # one folder for nft files and iptables rules, each module's default elsewhere
    },
}


@pytest.fixture(scope="module")
def docs() -> dict:
    modules = sorted({m for members in GROUPS.values() for m in members})
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "-t", "module", "--json"]
                          + [f"kubenode.dataplane.{m}" for m in modules],
                          capture_output=True, text=True, env=ansible_run.env(), cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    return {name.rsplit(".", 1)[1]: data["doc"]["options"] for name, data in json.loads(proc.stdout).items()}


def test_every_group_is_documented_with_its_options():
    assert set(GROUPS) == set(OPTIONS)
    rows = {line.split("|")[1].strip(" `"): line for line in GUIDE.read_text().splitlines()
            if line.startswith("| `group/kubenode.dataplane.")}
    assert set(rows) == {f"group/kubenode.dataplane.{g}" for g in GROUPS}, f"the guide's table of groups: {sorted(rows)}"
    for group, members in GROUPS.items():
        row = rows[f"group/kubenode.dataplane.{group}"]
        modules, options = row.split("|")[2], row.split("|")[3]
        assert {m.strip(" `") for m in modules.split(",")} == set(members), row
        assert all(f"`{o}`" in options for o in OPTIONS[group]), row


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_group_options_are_taken_alike_by_every_module(group, docs):
    members = GROUPS[group]
    assert all(m in docs for m in members), f"{group}: not modules of the collection: {set(members) - set(docs)}"
    if len(members) < 2:
        return
    shared = set.intersection(*(set(docs[m]) for m in members))
    assert shared == OPTIONS[group] | NOT_FOR_THE_GROUP.get(group, set()), (
        f"{group}: its modules share {sorted(shared)}; put each in OPTIONS (and the guide) or NOT_FOR_THE_GROUP")
    for option in OPTIONS[group]:
        specs = {m: docs[m][option] for m in members}
        types = {spec.get("type", "str") for spec in specs.values()}
        assert len(types) == 1, f"{group}: {option} has the types {specs}"
        choices = [set(spec["choices"]) for spec in specs.values() if spec.get("choices")]
        assert not choices or set.intersection(*choices), f"{group}: no value of {option} suits every module"
