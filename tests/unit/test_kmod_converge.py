"""The kernel_module backend through the converge loop, case by case from kmod_cases.yml:
real captured kernel snapshots and command output, the exact commands expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.unit.kmod_support import FakeModule, make_root, module_params

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import converge  # noqa: E402
from ansible_collections.kubenode.dataplane.plugins.module_utils._kmod import KmodBackend  # noqa: E402
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError  # noqa: E402

CASES = yaml.safe_load((Path(__file__).parent / "kmod_cases.yml").read_text())["cases"]
OWN = ("/etc/modules-load.d/kubenode-dataplane.conf", "/etc/modprobe.d/kubenode-dataplane.conf")


def subset(expected, actual, path="result"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected a dict, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing in {actual!r}"
            subset(value, actual[key], f"{path}.{key}")
    else:
        assert actual == expected, f"{path}: expected {expected!r}, got {actual!r}"


def read_etc(root: Path) -> dict:
    etc = root / "etc"
    return {"/" + str(p.relative_to(root)): p.read_bytes() for p in etc.rglob("*") if p.is_file()} if etc.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(case, tmp_path):
    root = make_root(tmp_path, case["root"], case.get("etc"))
    etc_before = read_etc(root)
    inodes_before = {p: (root / p.lstrip("/")).stat().st_ino for p in etc_before}
    module = FakeModule(module_params(case["args"]), root, case.get("commands", []), check_mode=case.get("check_mode", False))
    backend = KmodBackend(module, root=str(root))
    error = None
    result = None
    try:
        result = converge(backend, module.check_mode, True)
    except DataplaneError as exc:
        error = str(exc)

    assert not module.expected, f"commands expected but not run: {module.expected}"
    if "failed" in case:
        assert error is not None, f"the case should fail; result: {result}"
        for part in case["failed"]:
            assert part in error, f"{part!r} not in the error: {error}"
        # a refused task writes nothing
        assert read_etc(root) == etc_before
    else:
        assert error is None, error
        subset(case.get("result", {}), result)
        by_name = {m["name"]: m for m in result["modules"]}
        for name, want in case.get("module", {}).items():
            subset(want, by_name[name], f"modules[{name}]")
        for part in case.get("diff_after_contains", []):
            assert part in result["diff"]["after"], f"{part!r} not in the diff:\n{result['diff']['after']}"
    for path, text in case.get("files", {}).items():
        real = root / path.lstrip("/")
        if text is None:
            assert not real.exists(), f"{path} should not exist; it holds:\n{real.read_text()}"
        else:
            assert real.read_text() == text
            assert real.stat().st_mode & 0o777 == 0o644
    # files the collection does not own are never touched
    after = read_etc(root)
    for path, data in etc_before.items():
        if path not in OWN:
            assert after.get(path) == data, f"{path} was changed"
    assert not [p for p in after if "/." in p], f"temporary files left behind: {list(after)}"
    if error is not None or not result["changed"] or module.check_mode:
        # nothing written at all: same files, same inodes
        assert {p: (root / p.lstrip("/")).stat().st_ino for p in after} == inodes_before
    for part in case.get("warnings", []):
        assert any(part in w for w in module.warnings), f"{part!r} not in warnings {module.warnings}"
