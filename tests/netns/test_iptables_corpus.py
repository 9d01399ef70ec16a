"""iptables_ruleset over the rule corpus (tests/netns/iptables_corpus.yml), with both backends and families.

Every form that this machine's iptables accepts (as captured in iptables_corpus.captured.json) applies on the
first run, each in a chain of its own jumped from the hook it needs, and reads back exactly as iptables
itself printed it in the capture; the second run and check mode change nothing. Every form iptables rejects
is refused with nothing changed. The module runs in-process on the netns host (module_driver.py), so that
the ~2,000 runs take seconds rather than an ansible-playbook round trip each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.netns.iptables_lab import chain_lines, foreign_part, save, seed_foreign, strip_counters

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
FORMS = yaml.safe_load((HERE / "iptables_corpus.yml").read_text())["forms"]
CAPTURED = json.loads((HERE / "iptables_corpus.captured.json").read_text())["results"]
FAMILIES = ("ipv4", "ipv6")
DEFAULT_HOOK = {"filter": "INPUT", "security": "INPUT", "nat": "PREROUTING", "mangle": "PREROUTING",
                "raw": "PREROUTING"}


def corpus(backend: str) -> list[dict]:
    """Each form as it applies to one family of ``backend``, with the capture's verdict."""
    out = []
    for form in FORMS:
        table = form.get("table", "filter")
        hook = form.get("hook", DEFAULT_HOOK[table])
        for family in FAMILIES:
            if form.get("family", "both") not in (family, "both"):
                continue
            got = CAPTURED[backend][family][f"{form['rule']}|{table}|{hook}"]
            out.append({"chain": f"KUBENODE-{len(out):04d}", "family": family, "table": table, "hook": hook,
                        "rules": list(form.get("setup", [])) + [form["rule"]], "captured": got})
    return out


def drive(host, calls: list[dict]) -> list[dict]:
    res = host.run([sys.executable, str(HERE / "module_driver.py")], input=json.dumps(calls))
    return json.loads(res.stdout)


def spec(form: dict) -> dict:
    return {"chain": form["chain"], "table": form["table"], "ip_version": form["family"], "jump_from": [form["hook"]],
            "rules": form["rules"]}


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_every_form_iptables_accepts_converges_and_every_other_is_refused(backend, netns_pair):
    lab, _inv = netns_pair
    h1 = lab.hosts[0]
    seed_foreign(h1, backend)
    foreign = {f: others(save(h1, backend, f)) for f in FAMILIES}
    forms = corpus(backend)
    accepted = [f for f in forms if f["captured"]["accepted"]]
    rejected = [f for f in forms if not f["captured"]["accepted"]]
    assert len(accepted) >= 900 and len(rejected) >= 250
    whole = {"module": "iptables_ruleset",
             "args": {"backend": backend, "canonical_cache": False, "chains": [spec(f) for f in accepted]}}
    first, second, check = drive(h1, [whole, whole, dict(whole, check_mode=True)])
    assert first.get("changed") is True and not first.get("failed"), first.get("msg")
    assert first["scratch_namespace"] == "used"
    assert second.get("changed") is False, second.get("msg")
    assert check.get("changed") is False, check.get("msg")

    # each chain as iptables printed the same rules in the capture
    texts = {f: save(h1, backend, f) for f in FAMILIES}
    counted = {f: save(h1, backend, f, counters=True) for f in FAMILIES}
    wrong = []
    for f in accepted:
        printed = [ln.split(" ", 2)[2] if ln.count(" ") >= 2 else "" for ln in chain_lines(texts[f["family"]], f["chain"])]
        if printed != f["captured"]["saved"]:
            wrong.append((f["family"], f["rules"], printed, f["captured"]["saved"]))
        for counters in f["captured"].get("counters") or []:
            assert f"[{counters}] -A {f['chain']} " in counted[f["family"]], f
    assert not wrong, wrong[:5]

    # the forms iptables rejects, one run each, on top of the converged chains: all refused, nothing moves
    # (without counters: the host's own IPv6 neighbour discovery counts in the converged INPUT chains)
    before = {f: strip_counters(save(h1, backend, f)) for f in FAMILIES}
    calls = [{"module": "iptables_ruleset",
              "args": {"backend": backend, "canonical_cache": False, "chains": [dict(spec(f), chain="KUBENODE-BAD")]}}
             for f in rejected]
    results = drive(h1, calls)
    refused = [(f["rules"][-1], r.get("msg", "")) for f, r in zip(rejected, results)]
    not_refused = [(rule, msg) for rule, msg in refused
                   if not (msg.startswith("iptables-restore rejected the ") and msg.endswith("; nothing was changed"))]
    assert not not_refused, not_refused[:5]
    after = {f: strip_counters(save(h1, backend, f)) for f in FAMILIES}
    assert after == before
    for f in FAMILIES:
        assert others(save(h1, backend, f)) == foreign[f]


def others(text: str) -> dict[str, str]:
    """The rules of others (kube-proxy's, Calico's, Docker's), per table that holds any: the corpus's raw and
    security chains bring those tables into being, which is no change to anybody's rules."""
    tables: dict[str, list[str]] = {}
    for line in strip_counters(foreign_part(text)).splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line, [])
        elif line.startswith(("-A ", ":")) and not (line.startswith(":") and " - " not in line + " "):
            current.append(line)
    return {t: "\n".join(lines) for t, lines in tables.items() if lines}
