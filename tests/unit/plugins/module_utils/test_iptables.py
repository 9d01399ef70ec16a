"""The iptables_ruleset backend, driven by tests/unit/plugins/module_utils/iptables_ruleset.yml:
the exact commands (argv lists) and the exact iptables-restore input, against captured output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.kubenode.dataplane.plugins.module_utils import _iptables as ipt
from ansible_collections.kubenode.dataplane.plugins.module_utils import _scratch
from ansible_collections.kubenode.dataplane.plugins.module_utils._scratch import SCRATCH_PREFIX
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import converge
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parents[1] / "fixtures" / "iptables"
CASES = yaml.safe_load((HERE / "iptables_ruleset.yml").read_text())
DEFAULTS = {"backend": "auto", "wait": 30, "force": False, "persist": False, "confirm_timeout": 0}


def table_of(text: str, table: str) -> str:
    """One table of an iptables-save output, as `iptables-save -t TABLE` prints it."""
    out, keep = [], False
    for line in text.splitlines():
        if line.startswith("*"):
            keep = line == f"*{table}"
        if keep:
            out.append(line)
        if keep and line == "COMMIT":
            keep = False
    return "\n".join(out) + "\n"


class FakeModule:
    """Answers run_command from the case's list, in order, and fails on any other command."""

    def __init__(self, commands: list, check_mode: bool) -> None:
        self.expected = list(commands)
        self.check_mode = check_mode
        self.seen: list = []
        self.warnings: list = []

    def get_bin_path(self, name, required=False, opt_dirs=None):
        known = {f"{b}-{v}{s}" for b in ("iptables", "ip6tables") for v in ("nft", "legacy") for s in ("", "-save", "-restore")}
        return f"/usr/sbin/{name}" if name in known or name in ("iptables", "ip") else None

    def run_command(self, argv, data=None, binary_data=False, environ_update=None, check_rc=False, expand_user_and_vars=True):
        assert environ_update["LC_ALL"] == "C"
        assert self.expected, f"unexpected command {argv}"
        step = self.expected.pop(0)
        written = None
        if len(argv) > 2 and argv[-2] == "-f":
            # iptables-save -f FILE: the output goes to that file of the module's
            written, argv = argv[-1], argv[:-1] + ["{file}"]
        # the scratch namespace's name is new on every run
        argv = ["{scratch}" if a.startswith(SCRATCH_PREFIX) else a for a in argv]
        assert argv == step["argv"]
        assert (data or None) == step.get("stdin"), f"stdin of {argv}"
        self.seen.append(argv)
        out = step.get("out", "")
        if "out_file" in step:
            out = (FIXTURES / step["out_file"]).read_text()
            if "out_table" in step:
                out = table_of(out, step["out_table"])
        if written is not None and step.get("rc", 0) == 0:
            Path(written).write_text(out)
            out = ""
        return step.get("rc", 0), out, step.get("err", "")

    def warn(self, msg):
        self.warnings.append(msg)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_commands(case, monkeypatch, tmp_path):
    monkeypatch.setattr(ipt, "legacy_tables", lambda family: set(case.get("legacy_tables", [])))
    monkeypatch.setattr(ipt, "CACHE_DIR", str(tmp_path / "cache"))
    # no scratch namespaces of killed runs to remove
    monkeypatch.setattr(_scratch, "NETNS_DIR", str(tmp_path / "netns"))
    module = FakeModule(case["commands"], case.get("check_mode", False))
    params = dict(DEFAULTS, **case["params"])
    if case.get("refused"):
        # the arguments themselves are wrong: refused when the backend is made, before any command
        with pytest.raises(DataplaneError) as err:
            ipt.Ruleset(module, Runner(module), params)
        assert str(err.value) == case["error"]
        assert module.seen == []
        return
    backend = ipt.Ruleset(module, Runner(module), params)
    keys = [backend._cache_key(s) for s in backend.specs if s.state == "present"]
    if case.get("cached"):
        # as an earlier run leaves it: the rules compiled, stored once iptables-save printed them so
        for s, key in zip([s for s in backend.specs if s.state == "present"], keys):
            s.compile(backend.backend, None)
            backend.cache.put(key, {"rules": s.rules, "sources": s.sources, "jump": s.jump})
    # the nf_tables generation before and after the restores, as NFT_MSG_GETGEN would report it
    generations = iter(case.get("generations") or [])
    backend.read_generation = lambda: next(generations, None)
    if "error" in case:
        with pytest.raises(DataplaneError) as err:
            converge(backend, module.check_mode, True)
        assert str(err.value) == case["error"]
    else:
        result = converge(backend, module.check_mode, True)
        assert result["changed"] is case["changed"]
        for key, value in case.get("result", {}).items():
            assert result[key] == value
    assert len(module.warnings) == case.get("warnings", 0), module.warnings
    if "cached_after" in case:
        assert all((backend.cache.get(k) is not None) is case["cached_after"] for k in keys)
    assert module.expected == [], "commands that were expected but did not run"


SAVES = sorted(p for p in (HERE.parents[1] / "fixtures").rglob("*") if p.is_file() and "save" in p.name)


@pytest.mark.parametrize("path", SAVES, ids=[str(p.relative_to(HERE.parents[1] / "fixtures")) for p in SAVES])
def test_parse_kept_reads_what_parse_save_reads(path):
    # real iptables-save outputs: the fast cut of the kept chains gives what the line-by-line parse gives
    text = path.read_text()
    full = ipt.parse_save(text)
    chains = {c for tb in full.values() for c in list(tb.declared) + list(tb.policies)}
    for keep in (chains, {"INPUT", "KUBE-SERVICES", "cali-INPUT"}, {"NOT-THERE"}, set()):
        slow, fast = ipt.parse_save(text, keep), ipt.parse_kept(text, keep)
        assert slow.keys() == fast.keys()
        for table in slow:
            assert (fast[table].declared, fast[table].policies, fast[table].rules) == \
                   (slow[table].declared, slow[table].policies, slow[table].rules)
            assert fast[table].counts == {c: n for c, n in slow[table].counts.items() if c in keep}


@pytest.mark.parametrize("text", [
    # rules of a chain that are not printed together, and a rule with neither matches nor target
    "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n-A A -j ACCEPT\n-A INPUT -j A\n-A A -j DROP\nCOMMIT\n",
    "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n-A A -j ACCEPT\n-A A\nCOMMIT\n",
    # lines that end in white space (iptables 1.4 printed a space after some matches): stripped as line by line
    "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n-A A -m state --state RELATED,ESTABLISHED -j ACCEPT \n-A A -j DROP \nCOMMIT\n",
    "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n-A A -j ACCEPT\t\n-A A -j DROP\r\nCOMMIT\n",
    "*filter\n:INPUT ACCEPT [0:0]\n:A - [0:0]\n-A A -m comment --comment x\u00a0-j ACCEPT\u2028\n-A A -j DROP\nCOMMIT\n",
])
def test_parse_kept_falls_back_where_the_chain_is_not_one_block(text):
    slow, fast = ipt.parse_save(text, {"A", "INPUT"}), ipt.parse_kept(text, {"A", "INPUT"})
    assert fast["filter"].rules == slow["filter"].rules


def test_restore_text_names_what_each_line_came_from_without_a_label_per_rule():
    before = {"chains": {"A": ["-j DROP"]}, "jumps": {"INPUT": [[2, "-j A"]]}}
    after = {"chains": {"A": [f"-p tcp -m tcp --dport {p} -j ACCEPT" for p in (22, 80, 443)]}, "jumps": {"INPUT": [[1, "-j A"]]}}
    asked = []

    def where(k):
        asked.append(k)
        return f"$.chains[0].rules[{k}]"

    text, origin = ipt.restore_text("filter", before, after, {"A": where})
    lines = text.split("\n")
    assert lines == ["*filter", ":A - [0:0]", "-D INPUT -j A", "-I INPUT 1 -j A", "-A A -p tcp -m tcp --dport 22 -j ACCEPT",
                     "-A A -p tcp -m tcp --dport 80 -j ACCEPT", "-A A -p tcp -m tcp --dport 443 -j ACCEPT", "COMMIT", ""]
    assert asked == []
    assert [origin[i] for i in range(9)] == ["", "A", "INPUT jump", "INPUT jump", "$.chains[0].rules[0]",
                                             "$.chains[0].rules[1]", "$.chains[0].rules[2]", "", ""]
    # the legacy write puts the built-in chains' policies (with their counters) after the table's line
    origin.insert(1, "", 2)
    assert [origin[i] for i in range(1, 5)] == ["", "", "A", "INPUT jump"]
    assert origin[8] == "$.chains[0].rules[2]"


@pytest.mark.parametrize("given", [
    ["-j ACCEPT", "-j DROP"],
    ["-j ACCEPT\n-j DROP"],  # one element of two lines is not the two rules
    [{"jump": "ACCEPT"}],
    [],
])
def test_the_cache_key_of_the_given_rules_tells_them_apart(given):
    others = [["-j ACCEPT", "-j DROP"], ["-j ACCEPT\n-j DROP"], [{"jump": "ACCEPT"}], [], ["-j ACCEPT"], ["-j DROP", "-j ACCEPT"]]
    assert [o for o in others if ipt.given_key(o) == ipt.given_key(given)] == [given]


def test_rules_from_text_skips_blank_lines_and_comments_and_keeps_line_numbers():
    assert ipt.rules_from_text("# head\n-i lo -j ACCEPT\n\n  -j DROP  \n  # tail") == (["-i lo -j ACCEPT", "-j DROP"], [2, 4])


def test_the_normaliser_is_loaded_only_when_a_rule_is_normalised():
    # a run whose rules all come from the cache never compiles _iptables_rules on the host
    code = "\n".join([
        "import sys",
        "from ansible_collections.kubenode.dataplane.plugins.module_utils import _iptables as ipt",
        "name = 'ansible_collections.kubenode.dataplane.plugins.module_utils._iptables_rules'",
        "print(name in sys.modules)",
        "spec = ipt.ChainSpec(0, {'chain': 'KUBENODE-X', 'rules': ['-p tcp --dport ssh -j ACCEPT']})",
        "spec.compile('nft', None)",
        "print(name in sys.modules, spec.rules)",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))).stdout
    assert out.splitlines() == ["False", "True ['-p tcp -m tcp --dport 22 -j ACCEPT']"]
