"""The iptables rule-form corpus and its capture agree: a corpus edit without a recapture fails.

tests/netns/iptables_corpus.yml holds rule forms as people write them, each with the verdict its
author expects; tests/netns/iptables_corpus.captured.json is what iptables-restore and
iptables-save made of each, per backend (nft, legacy) and family, captured in scratch network
namespaces by tests/netns/capture_iptables_corpus.py (as root). This test reads the two files
only: it runs no iptables, so it runs wherever the units do.
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import yaml

NETNS = Path(__file__).resolve().parents[3] / "netns"
CORPUS = yaml.safe_load((NETNS / "iptables_corpus.yml").read_text())["forms"]
CAPTURED = json.loads((NETNS / "iptables_corpus.captured.json").read_text())

BACKENDS = ("nft", "legacy")
FAMILIES = ("ipv4", "ipv6")
DEFAULT_HOOK = {"filter": "INPUT", "nat": "PREROUTING", "mangle": "PREROUTING", "raw": "PREROUTING", "security": "INPUT"}
KEYS = {"ext", "rule", "family", "table", "hook", "setup", "expect", "needs", "backends_disagree"}
RECAPTURE = "recapture as root: .venv/bin/python tests/netns/capture_iptables_corpus.py"


def key(form: dict[str, t.Any]) -> str:
    table = form.get("table", "filter")
    return f"{form['rule']}|{table}|{form.get('hook') or DEFAULT_HOOK[table]}"


def families(form: dict[str, t.Any]) -> tuple[str, ...]:
    fam = form.get("family", "both")
    return FAMILIES if fam == "both" else (fam,)


def verdicts(form: dict[str, t.Any]) -> dict[tuple[str, str], bool]:
    return {(b, fam): CAPTURED["results"][b][fam][key(form)]["accepted"] for b in BACKENDS for fam in families(form)}


def test_every_form_is_well_formed_and_unique():
    seen = set()
    for form in CORPUS:
        assert set(form) <= KEYS and {"ext", "rule", "expect"} <= set(form), form
        assert form["expect"] in ("accepted", "rejected"), form
        assert form.get("family", "both") in ("ipv4", "ipv6", "both"), form
        assert form.get("table", "filter") in DEFAULT_HOOK, form
        for fam in families(form):
            assert (key(form), fam) not in seen, f"twice: {key(form)} ({fam})"
            seen.add((key(form), fam))


def test_every_form_has_a_capture_for_each_backend_and_family():
    missing = [f"{b}/{fam}: {key(form)}" for form in CORPUS for b in BACKENDS for fam in families(form)
               if key(form) not in CAPTURED["results"][b][fam]]
    assert not missing, f"{RECAPTURE}\n" + "\n".join(missing)


def test_the_capture_holds_the_corpus_only():
    # a form removed or edited in the corpus leaves its old key in a stale capture
    wanted = {(b, fam, key(form)) for form in CORPUS for b in BACKENDS for fam in families(form)}
    stale = [f"{b}/{fam}: {k}" for b in BACKENDS for fam in FAMILIES for k in CAPTURED["results"][b][fam]
             if (b, fam, k) not in wanted]
    assert not stale, f"{RECAPTURE}\n" + "\n".join(stale)


def test_each_capture_is_complete():
    for b in BACKENDS:
        for fam in FAMILIES:
            for k, res in CAPTURED["results"][b][fam].items():
                if res["accepted"]:
                    assert res["error"] is None and isinstance(res["saved"], list), (b, fam, k)
                else:
                    assert res["saved"] == [] and res["error"], (b, fam, k)


def problem(form: dict[str, t.Any]) -> str | None:
    """Why the capture does not bear out the form's `expect`, or None."""
    got, want = verdicts(form), form["expect"] == "accepted"
    if form.get("needs") in CAPTURED["lacking"]:
        # the machine that captured lacked what the form needs: it cannot have been accepted
        if want or any(got.values()):
            return f"needs {form['needs']}, lacking where captured, so expect: rejected: {got}"
    elif form.get("backends_disagree"):
        # `expect` is the legacy backend's verdict, nft gives the other one, in every family
        for fam in families(form):
            if got[("nft", fam)] == got[("legacy", fam)]:
                return f"backends_disagree, but both say accepted={got[('nft', fam)]} in {fam}"
            if got[("legacy", fam)] != want:
                return f"backends_disagree: expect must be the legacy verdict, captured {got}"
    elif any(v != want for v in got.values()):
        return f"expect: {form['expect']}, captured {got}"
    return None


def test_expect_matches_the_capture():
    problems = [f"{key(form)}: {why}" for form in CORPUS if (why := problem(form))]
    assert not problems, f"{len(problems)} forms ({RECAPTURE} and read why):\n" + "\n".join(problems)


def test_the_corpus_is_large_and_wide_enough():
    accepted = sum(f["expect"] == "accepted" for f in CORPUS)
    rejected = sum(f["expect"] == "rejected" for f in CORPUS)
    extensions = {f["ext"] for f in CORPUS} - {"standard"}
    assert accepted >= 280 and rejected >= 30, (accepted, rejected)
    assert len(extensions) >= 40, sorted(extensions)
    assert {f.get("table", "filter") for f in CORPUS} == set(DEFAULT_HOOK)
    assert {fam for f in CORPUS for fam in families(f)} == set(FAMILIES)
