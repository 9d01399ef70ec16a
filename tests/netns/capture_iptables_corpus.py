"""Captures what this machine's iptables and kernel make of every rule form of the corpus.

    .venv/bin/python tests/netns/capture_iptables_corpus.py        # as root

The corpus is tests/netns/iptables_corpus.yml: rule forms as people write them, each with the
table, the built-in chain (hook) that jumps to the chain holding it, and the verdict its author
expects. For each backend (nft, legacy) and each family a form applies to, the form is restored
with ``iptables-restore -w 5 --noflush`` into a chain of its own (KN-C and a hash of the form),
jumped from the hook so that the kernel checks the hook restrictions of the rule's matches and
target; it is read back with iptables-save, and the chain is deleted again. The result is
tests/netns/iptables_corpus.captured.json:

    {"iptables": "<iptables --version>", "kernel": "<uname -r>", "lacking": [needs missing here],
     "results": {"nft": {"ipv4": {"<rule>|<table>|<hook>": {"accepted": true, "saved": [...],
                                                          "error": null}}, "ipv6": {...}},
                 "legacy": {...}}}

"saved" holds the iptables-save lines of the chain (the text after ``-A KN-Cxxxxxxxx``), "error"
the first line of iptables-restore's error when it refused the form (see first_line), and
"counters" the ``[packets:bytes]`` of each saved line when any is not zero (rules given ``-c``).
"lacking" lists the corpus's `needs:` this machine cannot meet (see lacking_needs).

There is one scratch network namespace per backend and family, not one per form: creating
namespaces is the slow part, and one chain per form, deleted after, keeps the forms apart.
Each namespace runs a worker (this script with --worker) so that the many iptables commands
run without ``ip netns exec`` in front of each; the four workers run at once. Nothing here
touches the host's own network namespace.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import typing as t
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "iptables_corpus.yml"
CAPTURED = HERE / "iptables_corpus.captured.json"

BACKENDS = ("nft", "legacy")
FAMILIES = ("ipv4", "ipv6")
# the built-in chain a form's chain is jumped from when the form names none
DEFAULT_HOOK = {"filter": "INPUT", "nat": "PREROUTING", "mangle": "PREROUTING", "raw": "PREROUTING", "security": "INPUT"}
# ipsets and nfacct objects the `needs: ipset` / `needs: nfacct` forms refer to; they live in the
# namespace (both are per network namespace), made only where the tool is installed
IPSETS = (("kn-hosts", "hash:ip"), ("kn-nets", "hash:net"), ("kn-hostport", "hash:ip,port"))
NFACCT_OBJECTS = ("kn-acct",)


class Form(t.TypedDict, total=False):
    ext: str
    rule: str
    family: str
    table: str
    hook: str
    expect: str
    needs: str
    setup: list[str]
    backends_disagree: bool


def load_corpus(path: Path = CORPUS) -> list[Form]:
    forms: list[Form] = yaml.safe_load(path.read_text())["forms"]
    seen: set[tuple[str, str]] = set()
    for form in forms:
        # the key is what the capture and the unit test look a form up by: unique in each family
        # (a rule may be written twice, once per family, where the families' verdicts differ)
        for fam in families_of(form):
            if (key(form), fam) in seen:
                raise SystemExit(f"duplicate form: {key(form)} ({fam})")
            seen.add((key(form), fam))
    return forms


def table_of(form: Form) -> str:
    return form.get("table", "filter")


def hook_of(form: Form) -> str:
    return form.get("hook") or DEFAULT_HOOK[table_of(form)]


def families_of(form: Form) -> tuple[str, ...]:
    fam = form.get("family", "both")
    return FAMILIES if fam == "both" else (fam,)


def key(form: Form) -> str:
    return f"{form['rule']}|{table_of(form)}|{hook_of(form)}"


def tool(backend: str, family: str, suffix: str) -> str:
    return f"{'iptables' if family == 'ipv4' else 'ip6tables'}-{backend}-{suffix}"


def lacking_needs(forms: list[Form]) -> list[str]:
    """The `needs:` of the corpus this machine cannot meet: their forms are captured as rejected.

    A need is a tool (ipset, nfacct: they make the objects the forms name), `selinux` (a loaded
    policy, for security contexts), or `kernel:NAME`, an xtables match or target the kernel
    lacks (the registered ones are listed in /proc/net/ip*_tables_{matches,targets}).
    """
    registered: set[str] = set()
    for name in ("ip_tables_matches", "ip_tables_targets", "ip6_tables_matches", "ip6_tables_targets"):
        try:
            registered.update(Path("/proc/net", name).read_text().split())
        except OSError:
            pass
    lacking = set()
    for need in {f["needs"] for f in forms if f.get("needs")}:
        if need.startswith("kernel:"):
            ok = need.split(":", 1)[1] in registered
        elif need == "selinux":
            ok = Path("/sys/fs/selinux/enforce").exists()
        else:
            ok = shutil.which(need) is not None
        if not ok:
            lacking.add(need)
    return sorted(lacking)


# ---------------------------------------------------------------------------------------------
# the worker: runs inside one namespace, for one backend and family


def restore(backend: str, family: str, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(backend, family, "restore"), "-w", "5", "--noflush"], input=text,
                          capture_output=True, text=True, check=False)


def first_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The first line of the error. Two kinds of line before it are not the error: "Warning: ..."
    (an extension the kernel lacks, a missing connlabel.conf: the error follows), and the bare
    "iptables-nft-restore v1.8.9 (nf_tables): " after which iptables-nft-restore puts the
    kernel's refusal on the next line (the two are joined)."""
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Warning:")] or lines
    if not lines:
        return f"exit status {proc.returncode}"
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]


def prepare_namespace(family: str) -> None:
    """Make the named objects some forms refer to (the kernel checks that they exist)."""
    if shutil.which("ipset"):
        fam = "inet" if family == "ipv4" else "inet6"
        for name, kind in IPSETS:
            subprocess.run(["ipset", "create", name, kind, "family", fam], check=True)
    if shutil.which("nfacct"):
        for name in NFACCT_OBJECTS:
            subprocess.run(["nfacct", "add", name], check=True)


def chain_of(form: Form) -> str:
    """The form's own chain: named from its key, not its place in the corpus, so that the
    errors naming it (nft's "rule in chain KN-C...") do not change when forms are added."""
    return "KN-C" + hashlib.sha1(key(form).encode()).hexdigest()[:8].upper()


def capture_one(backend: str, family: str, form: Form) -> dict[str, t.Any]:
    table, hook = table_of(form), hook_of(form)
    chain = chain_of(form)
    body = [f"-A {chain} {r}" for r in form.get("setup", [])] + [f"-A {chain} {form['rule']}"]
    text = "\n".join([f"*{table}", f":{chain} - [0:0]", *body, f"-A {hook} -j {chain}", "COMMIT", ""])
    proc = restore(backend, family, text)
    if proc.returncode != 0:
        # a refused transaction leaves nothing behind (legacy commits a table whole, nft aborts it)
        return {"accepted": False, "saved": [], "error": first_line(proc)}
    # -c: the counters a rule was given with -c show only there
    out = subprocess.run([tool(backend, family, "save"), "-c", "-t", table], capture_output=True, text=True,
                         check=True).stdout
    saved, counters = [], []
    prefix = f"-A {chain} "
    for line in out.splitlines():
        cnt = ""
        if line.startswith("["):
            cnt, line = line[1:].split("] ", 1)
        if line.startswith(prefix):
            saved.append(line[len(prefix):])
            counters.append(cnt)
    result: dict[str, t.Any] = {"accepted": True, "saved": saved, "error": None}
    if any(c not in ("", "0:0") for c in counters):
        result["counters"] = counters
    gone = restore(backend, family, f"*{table}\n-D {hook} -j {chain}\n-F {chain}\n-X {chain}\nCOMMIT\n")
    if gone.returncode != 0:
        raise RuntimeError(f"{backend}/{family}: cannot delete {chain}: {first_line(gone)}")
    return result


def worker(backend: str, family: str) -> None:
    """Reads the forms on stdin, prints {key: result} on stdout."""
    todo: list[Form] = json.load(sys.stdin)
    prepare_namespace(family)
    results = {key(form): capture_one(backend, family, form) for form in todo}
    # every form's chain is gone again, refused ones included (else a later form could see it)
    for table in sorted({table_of(f) for f in todo}):
        out = subprocess.run([tool(backend, family, "save"), "-t", table], capture_output=True, text=True, check=True).stdout
        left = [ln for ln in out.splitlines() if ln.startswith(":KN-C")]
        if left:
            raise RuntimeError(f"{backend}/{family}: chains left in {table}: {left}")
    json.dump(results, sys.stdout)


# ---------------------------------------------------------------------------------------------
# the driver: one namespace and one worker per backend and family


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--out", type=Path, default=CAPTURED)
    ap.add_argument("--worker", nargs=2, metavar=("BACKEND", "FAMILY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    forms = load_corpus(args.corpus)
    namespaces: list[str] = []
    running: dict[tuple[str, str], subprocess.Popen[str]] = {}
    try:
        for backend in BACKENDS:
            for family in FAMILIES:
                ns = f"kn-corpus-{os.getpid()}-{backend}-{family}"
                subprocess.run(["ip", "netns", "add", ns], check=True)
                namespaces.append(ns)
                todo = [f for f in forms if family in families_of(f)]
                proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, __file__, "--worker", backend, family],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert proc.stdin is not None
                proc.stdin.write(json.dumps(todo))
                proc.stdin.close()
                running[(backend, family)] = proc
        results: dict[str, dict[str, t.Any]] = {b: {} for b in BACKENDS}
        for (backend, family), proc in running.items():
            assert proc.stdout is not None
            out = proc.stdout.read()
            if proc.wait() != 0:
                raise SystemExit(f"worker {backend}/{family} failed")
            results[backend][family] = json.loads(out)
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.kill()
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    doc = {
        "iptables": subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=True).stdout.strip(),
        "kernel": os.uname().release,
        "lacking": lacking_needs(forms),
        "results": results,
    }
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    summary(forms, doc)


def problems(forms: list[Form], doc: dict[str, t.Any]) -> list[str]:
    """Where the corpus and the capture disagree (the unit test checks the same, on its own).

    A form's `expect` must be every backend's and family's verdict, except: a form whose
    `needs:` was lacking is captured rejected (and says `expect: rejected`); a form marked
    `backends_disagree` has nft and legacy differ in each of its families, legacy saying `expect`.
    """
    out = []
    lacking = set(doc["lacking"])
    for form in forms:
        k, want = key(form), form["expect"] == "accepted"
        got = {(b, fam): doc["results"][b][fam][k]["accepted"] for b in BACKENDS for fam in families_of(form)}
        if form.get("needs") in lacking:
            if want or any(got.values()):
                out.append(f"needs {form['needs']} (lacking) but not rejected everywhere: {k} {got}")
        elif form.get("backends_disagree"):
            for fam in families_of(form):
                if got[("nft", fam)] == got[("legacy", fam)] or got[("legacy", fam)] != want:
                    out.append(f"backends_disagree not as said ({fam}): {k} {got}")
        elif any(v != want for v in got.values()):
            out.append(f"expect={form['expect']}: {k} {got}")
    return out


def summary(forms: list[Form], doc: dict[str, t.Any]) -> None:
    """Counts, and every form whose capture differs from what the corpus says (to look at)."""
    print(f"{len(forms)} forms, {len({f['ext'] for f in forms})} extensions; "
          f"{sum(f['expect'] == 'accepted' for f in forms)} expected accepted, "
          f"{sum(f['expect'] == 'rejected' for f in forms)} rejected; lacking here: {', '.join(doc['lacking']) or '-'}")
    for backend in BACKENDS:
        for family in FAMILIES:
            res = doc["results"][backend][family]
            acc = sum(r["accepted"] for r in res.values())
            print(f"{backend}/{family}: {acc} accepted, {len(res) - acc} rejected")
    for line in problems(forms, doc):
        print("MISMATCH", line)


if __name__ == "__main__":
    main()
