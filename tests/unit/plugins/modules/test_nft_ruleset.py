"""nft_ruleset's commands, scenario by scenario from nft_ruleset.yml, with real captured nft output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ansible_collections.kubenode.dataplane.plugins.module_utils import _nft as nft
from ansible_collections.kubenode.dataplane.plugins.module_utils import _scratch
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import VerifyError, converge
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner

HERE = Path(__file__).resolve().parent
FIX = HERE.parents[1] / "fixtures" / "nft"
SCENARIOS = yaml.safe_load((HERE / "nft_ruleset.yml").read_text())


class ScriptedModule:
    """Answers each command with the next scripted output; any other command fails the test."""

    def __init__(self, steps, tmpdir, check_mode):
        self.steps = list(steps)
        self.tmpdir = str(tmpdir)
        self.check_mode = check_mode
        self._diff = True
        self.workdir = None

    def get_bin_path(self, name, required=False, opt_dirs=None):
        return None if name == "timeout" else name

    def fill(self, text):
        return text.replace("{workdir}", self.workdir or "")

    def run_command(self, argv, data=None, **_kw):
        if self.workdir is None:
            found = [d for d in os.listdir(self.tmpdir) if d.startswith("kubenode-nft-")]
            self.workdir = os.path.join(self.tmpdir, found[0]) if found else None
        assert self.steps, f"unexpected command {argv}"
        step = self.steps.pop(0)
        # the scratch namespace's name is new on every run
        argv = ["{scratch}" if a.startswith(_scratch.SCRATCH_PREFIX) else a for a in argv]
        assert argv == [self.fill(a) for a in step["argv"]], f"expected {step['argv']}, ran {argv}"
        if "stdin" in step:
            assert (data.decode() if isinstance(data, bytes) else data) == self.fill(step["stdin"])
        out = (FIX / step["out_file"]).read_text() if "out_file" in step else ""
        err = (FIX / step["err_file"]).read_text() if "err_file" in step else ""
        for old, new in (step.get("err_replace") or {}).items():
            err = err.replace(old, self.fill(new))
        return step.get("rc", 0), out, err


@pytest.mark.parametrize("case", SCENARIOS, ids=[c["id"] for c in SCENARIOS])
def test_commands(case, tmp_path, monkeypatch):
    # no scratch namespaces of killed runs to remove
    monkeypatch.setattr(_scratch, "NETNS_DIR", str(tmp_path / "netns"))
    if "stand_in_rounds" in case:
        monkeypatch.setattr(nft, "STAND_IN_ROUNDS", case["stand_in_rounds"])
    params = dict(case["params"])
    if "content_file" in params:
        params["content"] = (FIX / params.pop("content_file")).read_text()
    opts = nft.options_from_params(params)
    opts.cache_dir = str(tmp_path / "cache")
    cache = nft.CanonicalCache(opts.cache_dir)
    key = nft.CanonicalCache.key((FIX / "nft-version.txt").read_text().strip(), opts.tables, opts.script or "")
    if "cached" in case:
        listed = nft.split_listing((FIX / case["cached"]).read_text())
        cache.put(key, {tb: nft.normalise(listed[tb]) for tb in opts.tables})
    module = ScriptedModule(case["run"], tmp_path, case.get("check_mode", False))
    backend = nft.NftBackend(module, Runner(module), opts)
    # the kernel's nf_tables generation before and after the apply, as NFT_MSG_GETGEN would report it
    generations = iter(case.get("generations") or [])
    backend.read_generation = lambda: next(generations, None)
    # the host's interfaces and their indexes, which the scratch namespace's stand-ins take
    backend.host_interfaces = lambda: dict(case.get("host_interfaces") or {"lo": 1})
    expect = case["expect"]
    if expect.get("verify_error"):
        with pytest.raises(VerifyError):
            converge(backend, module.check_mode, True)
    elif "failed" in expect:
        with pytest.raises(DataplaneError) as err:
            converge(backend, module.check_mode, True)
        assert str(err.value) == module.fill(expect["failed"])
    else:
        result = converge(backend, module.check_mode, True)
        assert result["changed"] is expect["changed"]
        if "canonical_source" in expect:
            assert result["canonical_source"] == expect["canonical_source"]
        if "transaction" in expect:
            assert Path(module.workdir, "transaction.nft").read_text() == module.fill(expect["transaction"])
        if "verified" in expect:
            assert result["verified"] == expect["verified"]
    if "cached_after" in expect:
        assert (cache.get(key) is not None) is expect["cached_after"]
    if "cached_form" in expect:
        # what the cache holds now: the kernel's form of that file
        listed = nft.split_listing((FIX / expect["cached_form"]).read_text())
        assert cache.get(key) == {tb: nft.normalise(listed[tb]) for tb in opts.tables}
    assert module.steps == [], f"commands that should have run did not: {module.steps}"
