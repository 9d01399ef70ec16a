# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The iptables backend of the collection.

- reads tables with ``iptables-save -t TABLE`` of the chosen backend (legacy tables that do not
  exist are not read, because reading one creates it);
- compares the owned chains and the jump rules into them as the canonical text iptables-save
  prints (see _iptables_rules.normalise), so equal means nothing is written;
- writes one ``iptables-restore --noflush`` transaction per table that touches only the owned
  chains and the jump rules into them. ``iptables-restore --test`` of the same input runs first in
  check mode and when more than one table changes (so that a bad rule in the second leaves the
  first untouched); a single table's restore is all or nothing by itself;
- remembers the iptables-save form of each chain's rules once the kernel printed them that way
  (_cache.CanonicalCache), so later runs skip the normaliser, and verifies an nft-backend apply
  of remembered rules by the nf_tables generation instead of reading the table again (_nfgen);
- picks the backend (where the node's rules live, as kubernetes-sigs/iptables-wrappers does),
  persists owned chains as a small systemd unit per chain, and arms a commit-confirmed rollback.

The normaliser (_iptables_rules) is imported where a rule has to be normalised, not at the top: a run
whose rules all come from the cache does not compile it on the node. The iptables_backend module's
part (the selection, migrating chains) is _iptables_backend, so that iptables_ruleset does not ship it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils._cache import CanonicalCache
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import Backend, VerifyError
from ansible_collections.kubenode.dataplane.plugins.module_utils._nfgen import ruleset_generation
from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables_names import (
    CHAIN_RE, FAMILIES, FOREIGN_PREFIXES, TABLES, SpecError, split_words, word,
)
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import (
    CommandError, CommandTimeout, DataplaneError, Runner,
)
from ansible_collections.kubenode.dataplane.plugins.module_utils._scratch import Scratch, ScratchUnavailable

BACKENDS = ("legacy", "nft")
PROC_TABLES = {"ipv4": "/proc/net/ip_tables_names", "ipv6": "/proc/net/ip6_tables_names"}
KUBELET_HINTS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")
RUN_DIR = "/run/kubenode-dataplane"
PERSIST_DIR = "/etc/kubenode-dataplane/iptables"
UNIT_DIR = "/etc/systemd/system"
CACHE_DIR = "/var/cache/kubenode-dataplane/iptables"
WANTS = "multi-user.target.wants"


class IptablesError(DataplaneError):
    """An iptables problem, told in one sentence."""


# ---------------------------------------------------------------- programs of a backend

def _base(family: str) -> str:
    return "iptables" if family == "ipv4" else "ip6tables"


def variant_of(runner: Runner, path: str) -> t.Optional[str]:
    """legacy or nft for an iptables program (a wrapper is asked with --version)."""
    name = os.path.basename(os.path.realpath(path))
    if "legacy" in name:
        return "legacy"
    if "nft" in name:
        return "nft"
    try:
        out = runner.run([path, "--version"], what="asking iptables for its variant").out
    except CommandError:
        return None
    if "nf_tables" in out:
        return "nft"
    # iptables before 1.8 says no variant and is legacy
    return "legacy" if "iptables v" in out else None


class Tools:
    """Paths of iptables, iptables-save and iptables-restore (and the ip6tables ones) of one backend."""

    def __init__(self, runner: Runner, backend: str, wait: int = 30) -> None:
        self.runner = runner
        self.backend = backend
        self.wait = wait

    def prog(self, family: str, suffix: str = "") -> str:
        name = f"{_base(family)}-{self.backend}{suffix}"
        path = self.runner.which(name, required=False)
        if path:
            return path
        plain = self.runner.which(_base(family) + suffix, required=False)
        if plain and variant_of(self.runner, self.runner.which(_base(family), required=False) or plain) == self.backend:
            return plain
        raise IptablesError(f"the {self.backend} iptables backend is not installed on this host ({name} is missing); "
                            "nothing was changed")

    def available(self) -> bool:
        try:
            self.prog("ipv4", "-save")
        except IptablesError:
            return False
        return True

    def restore_argv(self, family: str, test: bool = False) -> t.List[str]:
        argv = [self.prog(family, "-restore"), "-w", str(self.wait), "--noflush"]
        return argv + (["--test"] if test else [])


def legacy_tables(family: str) -> t.Set[str]:
    """The legacy tables that exist in this network namespace (reading a legacy table creates it)."""
    try:
        with open(PROC_TABLES[family], encoding="ascii") as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:
        return set()


def save(tools: Tools, family: str, args: t.List[str], what: str, inside: t.Optional[Scratch] = None) -> str:
    """What iptables-save prints, written by it to a file of ours (its -f option) and read in one go.

    AnsibleModule.run_command collects a program's output by appending each piece read from the pipe to
    one bytes object, which takes time that grows with the square of the output's size: 0.5 s for the
    7 MB of a table with 100,000 rules. The -legacy-save and -nft-save programs (iptables 1.8 and later)
    take -f; any other iptables-save, or one that refuses -f, prints to the pipe as usual. ``inside``: a
    scratch namespace to read instead of this one.
    """
    prog = tools.prog(family, "-save")
    run = inside.run if inside is not None else tools.runner.run
    if os.path.basename(prog).endswith(("-legacy-save", "-nft-save")):
        fd, path = tempfile.mkstemp(prefix="kubenode-iptables-save.")
        os.close(fd)
        try:
            run([prog] + args + ["-f", path], what=what)
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except CommandTimeout:
            raise
        except CommandError:
            pass  # asked again below, without -f
        finally:
            os.unlink(path)
    return run([prog] + args, what=what).out


def read_table(tools: Tools, family: str, table: str) -> str:
    if tools.backend == "legacy" and table not in legacy_tables(family):
        return ""
    return save(tools, family, ["-t", table], f"reading the {family} {table} table")


def read_all(tools: Tools, family: str) -> str:
    if tools.backend == "legacy" and not legacy_tables(family):
        return ""
    return save(tools, family, [], f"reading the {family} tables")


# ---------------------------------------------------------------- iptables-save output

class Saved:
    """One table as iptables-save printed it."""

    __slots__ = ("policies", "declared", "rules", "counts")

    def __init__(self) -> None:
        self.policies: t.Dict[str, str] = {}
        self.declared: t.List[str] = []  # user-defined chains
        self.rules: t.Dict[str, t.List[str]] = {}  # chain -> rule text after "-A CHAIN "
        self.counts: t.Dict[str, int] = {}

    def declare(self, line: str) -> None:
        """A chain declaration line (``:NAME POLICY [p:b]``): a built-in chain's policy or a user chain."""
        name, _sp, rest = line[1:].partition(" ")
        policy = rest.split(" ", 1)[0]
        if policy == "-":
            self.declared.append(name)
        else:
            self.policies[name] = policy


def parse_save(text: str, keep: t.Optional[t.Collection[str]] = None) -> t.Dict[str, Saved]:
    """Tables of an iptables-save output; rule texts are kept only for ``keep`` chains (all if None)."""
    tables: t.Dict[str, Saved] = {}
    cur: t.Optional[Saved] = None
    for line in text.split("\n"):
        if line.startswith("-A "):
            sp = line.find(" ", 3)
            chain = line[3:sp] if sp > 0 else line[3:]
            if cur is None:
                continue
            if keep is None or chain in keep:
                cur.rules.setdefault(chain, []).append(line[sp + 1:].rstrip() if sp > 0 else "")
            cur.counts[chain] = cur.counts.get(chain, 0) + 1
        elif line.startswith(":"):
            if cur is not None:
                cur.declare(line)
        elif line.startswith("*"):
            cur = tables.setdefault(line[1:].strip(), Saved())
    return tables


def parse_kept(text: str, keep: t.Collection[str]) -> t.Dict[str, Saved]:
    """Like parse_save, but only the ``keep`` chains' rules are read (and counted), fast on large tables.

    iptables-save prints a table's chain declarations first and then every chain's rules together, chain
    after chain. Each kept chain's rules are therefore cut out of the text as one block of lines, instead of
    the text being walked line by line; a table where that does not hold is read by parse_save.
    """
    tables: t.Dict[str, Saved] = {}
    start = 0 if text.startswith("*") else text.find("\n*") + 1
    if start == 0 and not text.startswith("*"):
        return tables
    while True:
        end = text.find("\nCOMMIT", start)
        if end < 0:
            return parse_save(text, keep)
        block = text[start:end + 1]
        if not block.isascii() or any(c in block for c in "\t\r\x0b\x0c\x1c\x1d\x1e\x1f"):
            return parse_save(text, keep)  # white space other than spaces and newlines: stripped line by line
        head_end = block.find("\n-A ")
        name, _nl, decl = (block if head_end < 0 else block[:head_end]).partition("\n")
        saved = tables.setdefault(name[1:].strip(), Saved())
        for line in decl.split("\n"):
            if line.startswith(":"):
                saved.declare(line)
        for chain in keep:
            prefix = f"-A {chain} "
            count = block.count("\n" + prefix)
            if f"\n-A {chain}\n" in block:
                return parse_save(text, keep)  # a rule without matches or target: no space after the name
            if not count:
                continue
            # from the chain's first rule to the end of its last: one block when it holds no other line
            first = block.find("\n" + prefix) + 1
            stop = block.find("\n", block.rfind("\n" + prefix) + 1)
            lines = block[first:stop if stop >= 0 else len(block)]
            if lines.count("\n") != count - 1:
                return parse_save(text, keep)
            rules = lines[len(prefix):].replace("\n" + prefix, "\n").split("\n")
            # the only white space a line can end with here is a space (see the check of the block above)
            spaced = " \n" in lines or lines.endswith(" ")
            saved.rules[chain] = [r.rstrip() for r in rules] if spaced else rules
            saved.counts[chain] = count
        start = text.find("\n*", end) + 1
        if start == 0:
            return tables


def jump_target(rule: str) -> t.Optional[str]:
    """The chain a rule jumps or goes to, if it ends with ``-j CHAIN``/``-g CHAIN`` (no target options)."""
    parts = rule.rsplit(" ", 2)
    if len(parts) >= 2 and parts[-2] in ("-j", "-g"):
        return parts[-1]
    return None


# ---------------------------------------------------------------- which backend

def alternatives_dirs(altdir: t.Optional[str], admindir: t.Optional[str]) -> t.List[str]:
    """update-alternatives options for a private alternatives system (tests, image builds); its log goes there too."""
    out = ["--altdir", altdir] if altdir else []
    if admindir:
        out += ["--admindir", admindir, "--log", os.path.join(admindir, "alternatives.log")]
    return out


def alternatives(runner: Runner, name: str, altdir: t.Optional[str], admindir: t.Optional[str]) -> t.Optional[dict]:
    ua = runner.which("update-alternatives", required=False)
    if not ua:
        return None
    argv = [ua] + alternatives_dirs(altdir, admindir)
    res = runner.run(argv + ["--query", name], ok_rc=(0, 1, 2), what=f"reading the {name} alternative")
    if res.rc != 0:
        return None
    info: t.Dict[str, t.Any] = {"status": None, "value": None, "alternatives": []}
    for line in res.out.splitlines():
        key, _sep, val = line.partition(": ")
        if key == "Status":
            info["status"] = val.strip()
        elif key == "Value":
            info["value"] = val.strip() if val.strip() != "none" else None
        elif key == "Alternative":
            info["alternatives"].append(val.strip())
    return info


def selected(runner: Runner, altdir: t.Optional[str] = None,
             admindir: t.Optional[str] = None) -> t.Tuple[t.Optional[str], t.Dict[str, t.Any]]:
    """The backend the plain ``iptables`` command uses, and the alternatives behind it."""
    alts = {name: alternatives(runner, name, altdir, admindir) for name in ("iptables", "ip6tables")}
    value = (alts.get("iptables") or {}).get("value")
    if value:
        return variant_of(runner, value), alts
    plain = runner.which("iptables", required=False)
    return (variant_of(runner, plain) if plain else None), alts


def has_hint(text: str) -> bool:
    return any(f"\n:{h} " in "\n" + text for h in KUBELET_HINTS)


def detect(runner: Runner, wait: int = 30) -> t.Tuple[str, str, bool]:
    """(backend, reason, mixed): where the node's rules live.

    Like kubernetes-sigs/iptables-wrappers: kubelet's KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY
    chains in the mangle table decide; otherwise the backend that holds rules; otherwise the one
    the iptables command selects.
    """
    nft, legacy = Tools(runner, "nft", wait), Tools(runner, "legacy", wait)
    have = {b: tl.available() for b, tl in (("nft", nft), ("legacy", legacy))}
    hints = {"nft": False, "legacy": False}
    for family in FAMILIES:
        if have["nft"]:
            hints["nft"] = hints["nft"] or has_hint(read_table(nft, family, "mangle"))
        if have["legacy"]:
            hints["legacy"] = hints["legacy"] or has_hint(read_table(legacy, family, "mangle"))
    if hints["nft"] != hints["legacy"]:
        found = "nft" if hints["nft"] else "legacy"
        return found, f"kubelet's KUBE-IPTABLES-HINT chain is in the {found} backend", False
    holds = {"legacy": False, "nft": False}
    if have["legacy"]:
        holds["legacy"] = any(_has_rules(read_all(legacy, f)) for f in FAMILIES)
    if have["nft"]:
        holds["nft"] = _nft_has_tables(runner, nft)
    sel, _alts = selected(runner)
    sel = sel or ("nft" if have["nft"] else "legacy")
    if holds["legacy"] != holds["nft"]:
        found = "legacy" if holds["legacy"] else "nft"
        return found, f"the node's rules are in the {found} backend", False
    if holds["legacy"]:
        return sel, f"both backends hold rules; using {sel}, the one the iptables command selects", True
    return sel, f"no rules yet; using {sel}, the one the iptables command selects", False


def _has_rules(text: str) -> bool:
    for saved in parse_save(text, keep=()).values():
        if saved.counts or saved.declared or any(p != "ACCEPT" for p in saved.policies.values()):
            return True
    return False


def _nft_has_tables(runner: Runner, nft: Tools) -> bool:
    """Whether iptables-nft tables exist, without dumping their rules when nft can list tables."""
    nft_bin = runner.which("nft", required=False)
    if nft_bin:
        try:
            out = runner.run([nft_bin, "list", "tables"], what="listing nftables tables").out
        except CommandError:
            out = None
        if out is not None:
            return any(line.split()[1:2] in (["ip"], ["ip6"]) and line.split()[2:3] in (["filter"], ["nat"], ["mangle"],
                                                                                        ["raw"], ["security"])
                       for line in out.splitlines() if line.startswith("table "))
    return any(_has_rules(read_all(nft, f)) for f in FAMILIES)


# ---------------------------------------------------------------- owned chains

def rules_from_text(text: str) -> t.Tuple[t.List[str], t.List[int]]:
    """Rule specs of a text, one per line (blank lines and ``#`` comments skipped), and their line numbers."""
    rules: t.List[str] = []
    lines: t.List[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        spec = line.strip()
        if spec and not spec.startswith("#"):
            rules.append(spec)
            lines.append(number)
    return rules, lines


def given_key(given: t.List[t.Any]) -> str:
    """The rules as they were given, as one text for the cache key.

    Rule specs of one line each are their lines joined (which says the same as JSON, in a fraction of
    the time for 100,000 rules); anything else, rules as data among them, is JSON.
    """
    if all(isinstance(g, str) for g in given):
        text = "\n".join(given)
        if text.count("\n") == len(given) - 1:
            return "lines:" + text
    return "json:" + json.dumps(given, sort_keys=True)


class ChainSpec:
    """One owned chain as the module was asked for it (rules already in canonical text)."""

    def __init__(self, index: int, params: t.Mapping[str, t.Any]) -> None:
        self.index = index
        self.where = f"$.chains[{index}]"
        self.chain: str = params["chain"]
        self.table: str = params.get("table") or "filter"
        self.family: str = params.get("ip_version") or "ipv4"
        self.state: str = params.get("state") or "present"
        rules = params.get("rules")
        self.given: t.List[t.Any] = list(rules) if isinstance(rules, list) else []
        # rules given as text: the line number of each rule in ``given`` (None for a list)
        self.lines: t.Optional[t.List[int]] = None
        if isinstance(rules, str):
            self.given, self.lines = rules_from_text(rules)
        # what check() refuses: rules that are neither a list nor a text
        self.rules_type = None if rules is None or isinstance(rules, (list, str)) else type(rules).__name__
        jump_from = params.get("jump_from") or []
        self.jump_from: t.List[str] = [jump_from] if isinstance(jump_from, str) else list(jump_from)
        self.jump_position: int = int(params.get("jump_position") if params.get("jump_position") is not None else 1)
        self.jump_spec: str = params.get("jump_spec") or ""
        self._inputs: t.Optional[t.List[str]] = None  # each given rule as iptables-restore reads it
        self._jump_line = ""  # the jump rule as iptables-restore reads it
        self.rules: t.List[str] = []  # the rules as iptables-save prints them
        self.sources: t.List[int] = []  # index in ``given`` of each printed rule ([] where not known)
        self.jump: str = ""  # the jump rule as iptables-save prints it
        self.source = ""  # where the printed form came from: cache, live, scratch namespace or normaliser

    @property
    def inputs(self) -> t.List[str]:
        """The given rules as iptables-restore reads them (worked out when first needed: a run whose rules
        all come from the cache and change nothing never needs them)."""
        if self._inputs is None:
            self.prepare()
        return self._inputs or []

    @property
    def jump_line(self) -> str:
        if self._inputs is None:
            self.prepare()
        return self._jump_line

    @property
    def cached(self) -> bool:
        """The printed form is one a live kernel printed for these rules (on an earlier run, or now)."""
        return self.source in ("cache", "live")

    @property
    def key(self) -> str:
        return f"{self.family} {self.table}"

    def origin(self, j: int) -> str:
        """Where rule ``j`` of ``given`` was written: its JSON path, and its line when the rules are a text."""
        if self.lines is None:
            return f"{self.where}.rules[{j}]"
        return f"{self.where}.rules (line {self.lines[j]})"

    def check(self, force: bool) -> None:
        w = self.where
        if not CHAIN_RE.match(self.chain or ""):
            raise IptablesError(f"{w}.chain: '{self.chain}' is not a chain name this module can own "
                                "(1-28 letters, digits, '_', '.', '-'); nothing was changed")
        if self.table not in TABLES:
            raise IptablesError(f"{w}.table: '{self.table}' is not one of {', '.join(TABLES)}; nothing was changed")
        if self.family not in FAMILIES:
            raise IptablesError(f"{w}.ip_version: '{self.family}' is not ipv4 or ipv6; nothing was changed")
        if self.rules_type:
            raise IptablesError(f"{w}.rules: the rules are a list (rule specs or rules as data) or a text of one rule "
                                f"spec per line, not {self.rules_type}; nothing was changed")
        builtins = TABLES[self.table]
        if self.chain in builtins or self.chain in ("ACCEPT", "DROP", "RETURN", "QUEUE", "REJECT", "LOG"):
            raise IptablesError(f"{w}.chain: {self.chain} is a built-in chain or target and cannot be owned; "
                                "rules go into a chain of your own that a built-in chain jumps to (jump_from); "
                                "nothing was changed")
        if not force and self.chain.startswith(FOREIGN_PREFIXES):
            raise IptablesError(f"{w}.chain: {self.chain} looks like a chain of kube-proxy, a CNI, Docker or a host "
                                "firewall, which this module does not rewrite unless force=true; nothing was changed")
        for j, b in enumerate(self.jump_from):
            if b not in builtins:
                raise IptablesError(f"{w}.jump_from[{j}]: '{b}' is not a built-in chain of the {self.table} table "
                                    f"({', '.join(builtins)}); nothing was changed")
        if len(set(self.jump_from)) != len(self.jump_from):
            raise IptablesError(f"{w}.jump_from: a chain is listed twice; nothing was changed")
        if self.jump_position == 0:
            raise IptablesError(f"{w}.jump_position: 0 is not a position (1 is the first rule, -1 the last); "
                                "nothing was changed")

    def prepare(self) -> None:
        """The given rules as iptables-restore reads them, one line each: what is applied is what was written.

        A rule is an iptables command line's words, quoted as in a shell; iptables-restore reads double quotes
        only, so a rule with quotes or backslashes is split and its words quoted again. Rules as data are
        rendered to words first.
        """
        try:
            words = split_words(self.jump_spec)
        except SpecError as exc:
            raise IptablesError(f"{self.where}.jump_spec: {exc}; nothing was changed") from None
        self._jump_line = " ".join([word(w) for w in words] + ["-j", self.chain])
        if all(isinstance(g, str) for g in self.given):
            # one scan of all the rules for what needs a closer look: 100,000 rules cost no Python loop
            text = "\n".join(self.given)
            if text.count("\n") == len(self.given) - 1 and not any(c in text for c in "'\"\\\r"):
                inputs = [g.strip() for g in self.given]
                if "" not in inputs:
                    self._inputs = inputs
                    return
        inputs: t.List[str] = []
        for j, item in enumerate(self.given):
            where = self.origin(j)
            try:
                if isinstance(item, str):
                    line = item.strip()
                    if "\n" in line or "\r" in line:
                        raise SpecError("a rule is one line; give each rule as an item (or a line) of its own")
                    if any(c in line for c in "'\"\\"):
                        line = " ".join(word(w) for w in split_words(line))
                elif isinstance(item, dict):
                    from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables_rules import structured_words
                    line = " ".join(word(w) for w in structured_words(item, self.family, where))
                else:
                    raise SpecError(f"a rule is a string or a dictionary, not {type(item).__name__}")
            except SpecError as exc:
                msg = str(exc)
                raise IptablesError(f"{msg if msg.startswith(where) else where + ': ' + msg}; nothing was changed") from None
            if not line:
                raise IptablesError(f"{where}: the rule is empty; nothing was changed")
            inputs.append(line)
        self._inputs = inputs

    def take(self, rules: t.List[str], jump: str, source: str) -> None:
        """The rules and the jump as iptables-save prints them, and where that was learnt."""
        self.rules, self.jump, self.source = rules, jump, source
        self.sources = sources_of(self.inputs, len(rules))

    def compile(self, backend: str, current: t.Optional[t.List[str]]) -> None:
        """The normaliser's prediction of the printed form, where no scratch namespace can be made.

        A rule written exactly as the kernel prints it is taken as it is.
        """
        # imported here, not at the top: a run whose rules all come from the cache never loads the normaliser
        from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables_rules import (
            SpecError, normalise, split_words, structured_words,
        )

        rules: t.List[str] = []
        sources: t.List[int] = []
        cur = current or []
        for j, item in enumerate(self.given):
            where = self.origin(j)
            try:
                if isinstance(item, str):
                    pos = len(rules)
                    if pos < len(cur) and cur[pos] == item and "\\" not in item:
                        texts = [item]
                    else:
                        texts = normalise(item, self.family, backend)
                elif isinstance(item, dict):
                    texts = normalise(structured_words(item, self.family, where), self.family, backend)
                else:
                    raise SpecError(f"{where}: a rule is a string or a dictionary, not {type(item).__name__}")
            except SpecError as exc:
                msg = str(exc)
                raise IptablesError(f"{msg if msg.startswith(where) else where + ': ' + msg}; nothing was changed") from None
            for text in texts:
                if not text:
                    raise IptablesError(f"{where}: the rule is empty; nothing was changed")
                rules.append(text)
                sources.append(j)
        self.rules, self.sources = rules, sources
        try:
            jumps = normalise(split_words(self.jump_spec) + ["-j", self.chain], self.family, backend)
        except SpecError as exc:
            raise IptablesError(f"{self.where}.jump_spec: {exc}; nothing was changed") from None
        if len(jumps) != 1:
            raise IptablesError(f"{self.where}.jump_spec: it must make one rule (one source and one destination "
                                "address at most); nothing was changed")
        self.jump = jumps[0]


_SET_OPTIONS = frozenset(("--match-set", "--add-set", "--del-set", "--map-set"))


def sets_named(lines: t.Iterable[str]) -> t.List[str]:
    """The ipsets that rules name, in order."""
    names: t.List[str] = []
    for line in lines:
        if "-set " not in line:
            continue
        words = line.split()
        for i, w in enumerate(words[:-1]):
            if w in _SET_OPTIONS and words[i + 1] not in names:
                names.append(words[i + 1])
    return names


_ADDRESS_FLAGS = frozenset(("-s", "--source", "--src", "-d", "--destination", "--dst"))


def sources_of(inputs: t.List[str], printed: int) -> t.List[int]:
    """Which input line each of ``printed`` rules came from: iptables makes one rule per source and
    destination address pair of a line (``-s a,b -d c`` is two). [] where the count does not add up."""
    if len(inputs) == printed:
        return list(range(printed))
    out: t.List[int] = []
    for j, line in enumerate(inputs):
        words = line.split()
        count = 1
        for i, w in enumerate(words[:-1]):
            if w in _ADDRESS_FLAGS:
                count *= words[i + 1].count(",") + 1
        out += [j] * count
    return out if len(out) == printed else []


def place(items: t.List[t.Any], item: t.Any, position: int) -> None:
    """Insert like ``iptables -I CHAIN position``, at the end when the chain is shorter; negative counts from the end."""
    n = len(items)
    idx = min(position - 1, n) if position > 0 else max(n + 1 + position, 0)
    items.insert(idx, item)


class Origins:
    """What each line of an iptables-restore input came from, for error messages.

    Kept as runs of lines, and worked out only for the line an error names: a chain of 100,000 rules
    costs one run, not 100,000 labels.
    """

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: t.List[t.Tuple[int, t.Union[str, t.Callable[[int], str]]]] = []  # (lines, label or k -> label)

    def add(self, label: t.Union[str, t.Callable[[int], str]], lines: int = 1) -> None:
        if lines:
            self.runs.append((lines, label))

    def insert(self, index: int, label: str, lines: int) -> None:
        """``lines`` lines of ``label`` before line ``index`` (0-based; only at a run's start)."""
        at, run = 0, 0
        while run < len(self.runs) and at < index:
            at += self.runs[run][0]
            run += 1
        if lines:
            self.runs.insert(run, (lines, label))

    def __getitem__(self, index: int) -> str:
        at = 0
        for lines, label in self.runs:
            if index < at + lines:
                return label if isinstance(label, str) else label(index - at)
            at += lines
        return ""


def restore_text(table: str, before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any],
                 sources: t.Optional[t.Dict[str, t.Callable[[int], str]]] = None,
                 inputs: t.Optional[t.Dict[str, t.List[str]]] = None) -> t.Tuple[str, Origins]:
    """iptables-restore --noflush input that turns the owned part of ``before`` into ``after``.

    Returns the text and what each of its lines came from (for error messages). A chain's rules are
    written as ``inputs`` gives them (the rules as given), else as ``after`` holds them (as printed);
    ``sources`` gives, per chain, where its k-th written rule came from.
    """
    lines: t.List[str] = [f"*{table}"]
    origin = Origins()
    origin.add("")
    bchains, achains = before["chains"], after["chains"]
    changed = [c for c in achains if achains[c] != bchains.get(c)]
    for c in changed:
        # declaring a chain creates it, or empties it when it exists
        if achains[c] is not None or bchains.get(c) is not None:
            lines.append(f":{c} - [0:0]")
            origin.add(c)
    moved = [b for b in after["jumps"] if after["jumps"][b] != before["jumps"].get(b, [])]
    for b in moved:
        for _idx, text in before["jumps"].get(b, []):
            lines.append(f"-D {b} {text}")
            origin.add(f"{b} jump")
    for b in moved:
        for idx, text in after["jumps"][b]:
            lines.append(f"-I {b} {idx} {text}")
            origin.add(f"{b} jump")
    for c in changed:
        rules = achains[c]
        if not rules:
            continue
        if inputs and c in inputs:
            rules = inputs[c]
        # one string for the whole chain: its lines are joined in C, not appended one by one
        prefix = f"-A {c} "
        lines.append(prefix + ("\n" + prefix).join(rules))
        origin.add((sources or {}).get(c) or c, len(rules))
    for c in changed:
        if achains[c] is None and bchains.get(c) is not None:
            lines.append(f"-X {c}")
            origin.add(c)
    lines.append("COMMIT")
    origin.add("")
    return "\n".join(lines) + "\n", origin


_LINE_RE = re.compile(r"line:? (\d+)")


def _restore_error(exc: CommandError, key: str, text: str, origin: Origins, step: str) -> IptablesError:
    detail = (exc.err or exc.out).strip()
    m = _LINE_RE.search(detail)
    where = ""
    if m:
        n = int(m.group(1))
        lines = text.split("\n")
        if 1 <= n <= len(lines):
            src = origin[n - 1]
            where = f" at '{lines[n - 1]}'" + (f" ({src})" if src else "")
            if lines[n - 1] == "COMMIT":
                where += (" (the kernel refused the table as a whole: for example a target that a built-in chain "
                          "jumping to the chain may not run, such as MASQUERADE reached from PREROUTING)")
    said = [ln.strip() for ln in detail.splitlines() if ln.strip()]
    first = said[0] if said else f"exit status {exc.rc}"
    if first.endswith(":") and len(said) > 1:
        first += " " + said[1]  # iptables-nft-restore names itself on one line and says what failed on the next
    return IptablesError(f"{step} the {key} table{where}: {first}; nothing was changed")


# ---------------------------------------------------------------- the ruleset module's backend

class Ruleset(Backend):
    """Owned chains and the jump rules into them, per (IP version, table)."""

    def __init__(self, module: t.Any, runner: Runner, params: t.Mapping[str, t.Any]) -> None:
        self.module = module
        self.runner = runner
        self.params = params
        self.wait = int(params.get("wait") or 30)
        self.force = bool(params.get("force"))
        self.persist = bool(params.get("persist"))
        self.persist_dir = params.get("persist_dir") or PERSIST_DIR
        self.unit_dir = params.get("unit_dir") or UNIT_DIR
        self.confirm_timeout = int(params.get("confirm_timeout") or 0)
        self.specs = [ChainSpec(i, c) for i, c in enumerate(params.get("chains") or [])]
        seen: t.Set[t.Tuple[str, str, str]] = set()
        for spec in self.specs:
            spec.check(self.force)
            ident = (spec.family, spec.table, spec.chain)
            if ident in seen:
                raise IptablesError(f"{spec.where}: the {spec.key} chain {spec.chain} is listed twice; nothing was changed")
            seen.add(ident)
        self.groups: t.Dict[str, t.List[ChainSpec]] = {}
        for spec in self.specs:
            self.groups.setdefault(spec.key, []).append(spec)
        choice = params.get("backend") or "auto"
        self.mixed = False
        if choice == "auto":
            choice, self.reason, self.mixed = detect(runner, self.wait)
            if self.mixed and hasattr(module, "warn"):
                module.warn(f"both iptables backends hold rules on this host; {self.reason}. Rules in the other "
                            "backend keep filtering traffic that this one does not see: see "
                            "kubenode.dataplane.iptables_backend")
        else:
            self.reason = "asked for"
        self.tools = Tools(runner, choice, self.wait)
        self.backend = choice
        self.rollback: t.Optional[t.Dict[str, t.Any]] = None
        self._before: t.Dict[str, t.Any] = {}
        self.cache = CanonicalCache(CACHE_DIR, params.get("canonical_cache", True) is not False)
        self._pending_cache: t.Dict[int, t.Tuple[str, t.Dict[str, t.Any]]] = {}  # per spec index
        self.no_scratch: t.Optional[str] = None  # why no scratch namespace could be made
        self._tool_ids: t.Dict[str, str] = {}
        self.read_generation: t.Callable[[], t.Optional[int]] = ruleset_generation
        self.committed_alone = False
        self.verified: t.Optional[str] = None

    # -- read
    def current(self) -> t.Dict[str, t.Any]:
        state: t.Dict[str, t.Any] = {"tables": {}, "files": {}, "_meta": {}}
        for key, specs in self.groups.items():
            family, table = key.split(" ")
            owned = {s.chain for s in specs}
            builtins = TABLES[table]
            saved = parse_kept(read_table(self.tools, family, table), keep=owned | set(builtins)).get(table, Saved())
            declared = set(saved.declared)
            chains = {s.chain: (list(saved.rules.get(s.chain, [])) if s.chain in declared else None) for s in specs}
            jumps: t.Dict[str, t.List[t.List[t.Any]]] = {}
            others: t.Dict[str, int] = {}
            for b in builtins:
                rules = saved.rules.get(b, [])
                ours = [[i + 1, r] for i, r in enumerate(rules) if jump_target(r) in owned]
                jumps[b] = ours
                others[b] = len(rules) - len(ours)
            state["tables"][key] = {"chains": chains, "jumps": jumps}
            # the chains of others: declared in a scratch namespace too, so that rules can jump to them
            state["_meta"][key] = {"others": others, "declared": [c for c in saved.declared if c not in owned]}
        if self.persist:
            state["files"] = self._read_files()
        return state

    # -- compute
    def desired(self, before: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
        self._before = before
        unknown = [s for s in self.specs if s.state == "present" and not self._known(s, before["tables"][s.key])]
        if unknown:
            self._learn(unknown, before)
        state: t.Dict[str, t.Any] = {"tables": {}, "files": {}, "_meta": before["_meta"]}
        for key, specs in self.groups.items():
            table = key.split(" ")[1]
            chains: t.Dict[str, t.Optional[t.List[str]]] = {}
            for s in specs:
                chains[s.chain] = None if s.state == "absent" else list(s.rules)
            jumps = {}
            for b in TABLES[table]:
                items: t.List[t.Any] = [None] * before["_meta"][key]["others"][b]
                for s in specs:
                    if s.state == "present" and b in s.jump_from:
                        place(items, s.jump, s.jump_position)
                jumps[b] = [[i + 1, x] for i, x in enumerate(items) if x is not None]
            state["tables"][key] = {"chains": chains, "jumps": jumps}
        if self.persist:
            state["files"] = self._wanted_files()
        return state

    def _tool_identity(self, family: str) -> str:
        """The installed restore program, which stands for iptables' version (its canonical spellings)."""
        if family not in self._tool_ids:
            prog = os.path.realpath(self.tools.prog(family, "-restore"))
            try:
                st = os.stat(prog)
                self._tool_ids[family] = f"{prog} {st.st_size} {int(st.st_mtime)}"
            except OSError:
                self._tool_ids[family] = prog
        return self._tool_ids[family]

    def _cache_key(self, s: ChainSpec) -> str:
        return CanonicalCache.key("iptables_ruleset", self.backend, self._tool_identity(s.family), s.family, s.table,
                                  s.chain, s.jump_spec, given_key(s.given))

    def _remember(self, s: ChainSpec) -> None:
        """Stored by result() once a live kernel printed these rules this way (the cache's promise)."""
        if self.cache.enabled and not self.module.check_mode:
            self._pending_cache[s.index] = (self._cache_key(s), {"rules": s.rules, "sources": s.sources, "jump": s.jump})

    def _known(self, s: ChainSpec, table: t.Mapping[str, t.Any]) -> bool:
        """The printed form of a chain's rules where it is known without loading them: from the cache, or
        from the live chain when the rules are written exactly as it prints them."""
        if self.cache.enabled:
            hit = self.cache.get(self._cache_key(s))
            if isinstance(hit, dict) and {"rules", "sources", "jump"} <= set(hit):
                s.rules, s.sources, s.jump, s.source = list(hit["rules"]), list(hit["sources"]), hit["jump"], "cache"
                return True
        live = table["chains"].get(s.chain)
        # a jump with matches of its own is known only once printed; a bare one iptables-save prints as written
        jumps = {text for b in s.jump_from for _i, text in table["jumps"].get(b, [])}
        if live == s.inputs and (not s.jump_spec.strip() or s.jump_line in jumps):
            s.take(list(live), s.jump_line, "live")
            self._remember(s)
            return True
        return False

    def _learn(self, specs: t.List[ChainSpec], before: t.Mapping[str, t.Any]) -> None:
        """The printed form of rules not seen before, from the kernel: the wanted chains of each table (the
        built-in chains jumping to them, so that a target's hooks are checked as in the real table) restored
        with the same program into a scratch network namespace, and read back there with iptables-save.

        Where no namespace can be made, the normaliser predicts the form, the result says so, and the apply
        takes the kernel's spelling when it differs from the prediction in spelling only (see verify).
        """
        keys = [k for k in self.groups if any(s.key == k for s in specs)]
        try:
            with Scratch(self.runner) as scratch:
                self._stand_in_sets(scratch, [s for k in keys for s in self.groups[k] if s.state == "present"])
                for family in FAMILIES:
                    fkeys = [k for k in keys if k.split(" ")[0] == family]
                    for key in fkeys:
                        text, origin = self._scratch_text(key, before)
                        res = scratch.run(self.tools.restore_argv(family), data=text, ok_rc=range(256),
                                          what=f"loading the {key} table into a scratch namespace")
                        if res.rc != 0:
                            raise _restore_error(CommandError(res.argv, res.rc, res.out, res.err), key, text, origin,
                                                 "iptables-restore rejected")
                    if fkeys:
                        printed = parse_save(save(self.tools, family, [], f"reading the {family} tables of the scratch "
                                                  "namespace", inside=scratch))
                        for s in specs:
                            if s.key in fkeys:
                                self._printed(s, printed.get(s.table) or Saved())
        except ScratchUnavailable as exc:
            self.no_scratch = str(exc)
            if hasattr(self.module, "warn"):
                self.module.warn(f"{exc}: the iptables-save form of rules not seen before is predicted by the "
                                 "collection's normaliser instead, and taken from the kernel after the apply where it "
                                 "is spelt otherwise; check mode may report a change that the real run does not make")
            for s in specs:
                s.compile(self.backend, before["tables"][s.key]["chains"].get(s.chain))
                s.source = "normaliser"
                self._remember(s)

    def _stand_in_sets(self, scratch: Scratch, specs: t.List[ChainSpec]) -> None:
        """Empty copies of the live ipsets that the rules name (-m set, -j SET): a set belongs to its network
        namespace, and iptables refuses a rule that names a set that does not exist."""
        names = sets_named(line for s in specs for line in s.inputs)
        ipset = self.runner.which("ipset", required=False) if names else None
        if not ipset:
            return  # no set named; or no ipset here, so no set exists and the restore refuses the rule as a live one would
        creates: t.List[str] = []
        for name in names:
            res = self.runner.run([ipset, "save", name], ok_rc=range(256), what=f"reading the ipset {name}")
            creates += [ln for ln in res.out.splitlines() if ln.startswith("create ")]
        if creates:
            scratch.run([ipset, "restore"], data="\n".join(creates) + "\n",
                        what="creating stand-ins for the ipsets the rules name in the scratch namespace")

    def _scratch_text(self, key: str, before: t.Mapping[str, t.Any]) -> t.Tuple[str, Origins]:
        """iptables-restore input of one table in a scratch namespace: the wanted chains, empty stand-ins for
        the live chains of others (so that rules can jump to them), and the jumps from the built-in chains."""
        table = key.split(" ")[1]
        present = [s for s in self.groups[key] if s.state == "present"]
        gone = {s.chain for s in self.groups[key] if s.state == "absent"}
        lines, origin = [f"*{table}"], Origins()
        origin.add("")
        for c in before["_meta"][key]["declared"]:
            if c not in gone:
                lines.append(f":{c} - [0:0]")
                origin.add(c)
        for s in present:
            lines.append(f":{s.chain} - [0:0]")
            origin.add(s.chain)
        for s in present:
            if s.inputs:
                prefix = f"-A {s.chain} "
                lines.append(prefix + ("\n" + prefix).join(s.inputs))
                origin.add(s.origin, len(s.inputs))
        for s in present:
            for b in s.jump_from:
                lines.append(f"-A {b} {s.jump_line}")
                origin.add(f"{s.where}.jump_spec")
        lines.append("COMMIT")
        origin.add("")
        return "\n".join(lines) + "\n", origin

    def _printed(self, s: ChainSpec, saved: Saved) -> None:
        jumps = [r for b in s.jump_from for r in saved.rules.get(b, []) if jump_target(r) == s.chain]
        if len(jumps) != len(s.jump_from):
            raise IptablesError(f"{s.where}.jump_spec: it must make one rule (one source and one destination address "
                                "at most); nothing was changed")
        s.take(list(saved.rules.get(s.chain, [])), jumps[0] if jumps else s.jump_line, "scratch namespace")
        self._remember(s)

    def equal(self, actual: t.Any, wanted: t.Any) -> bool:
        return actual["tables"] == wanted["tables"] and actual["files"] == wanted["files"]

    def _changed_groups(self, before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any]) -> t.List[str]:
        return [k for k in self.groups if before["tables"][k] != after["tables"][k]]

    def _sources(self, key: str) -> t.Dict[str, t.Callable[[int], str]]:
        """Per owned chain: where its k-th rule was written (worked out when an error names it)."""
        return {s.chain: s.origin for s in self.groups[key]}

    def _inputs(self, key: str) -> t.Dict[str, t.List[str]]:
        """Per wanted chain: its rules as given, which is what a restore writes."""
        return {s.chain: s.inputs for s in self.groups[key] if s.state == "present"}

    # -- dry run
    def validate(self, after: t.Dict[str, t.Any]) -> None:
        before = self._before
        changed = self._changed_groups(before, after)
        if len(changed) == 1 and not self.module.check_mode:
            return  # one table's iptables-restore commits all of its input or none of it
        for key in changed:
            family, table = key.split(" ")
            text, origin = restore_text(table, before["tables"][key], after["tables"][key], self._sources(key),
                                        self._inputs(key))
            try:
                self.runner.run(self.tools.restore_argv(family, test=True), data=text,
                                what=f"testing the {key} table")
            except CommandError as exc:
                raise _restore_error(exc, key, text, origin, "iptables-restore --test rejected") from None

    # -- write
    def _write(self, family: str, table: str, text: str, origin: Origins, what: str) -> None:
        """One iptables-restore --noflush run.

        The legacy kernel interface replaces a whole table at a time: iptables-restore keeps the
        rules' counters but zeroes the policy counters of the built-in chains unless it is given
        them, so they are read just before and handed back (-c); a packet counted in the
        milliseconds between the two is the only thing that can get lost.
        """
        argv = self.tools.restore_argv(family)
        if self.backend == "legacy":
            saved = save(self.tools, family, ["-c", "-t", table], f"reading the {family} {table} counters")
            # the chain declarations come first: the rules after them need not be split into lines
            first_rule = saved.find("\n-A ")
            declarations = saved if first_rule < 0 else saved[:first_rule]
            policies = [ln for ln in declarations.split("\n") if ln.startswith(":") and " - " not in ln]
            head = f"*{table}\n"
            text = text.replace(head, head + "".join(p + "\n" for p in policies), 1)
            origin.insert(1, "", len(policies))
            argv.append("-c")
        try:
            self.runner.run(argv, data=text, what=what)
        except CommandError as exc:
            raise _restore_error(exc, f"{family} {table}", text, origin, "iptables-restore failed on") from None

    def apply(self, before: t.Dict[str, t.Any], after: t.Dict[str, t.Any]) -> None:
        done: t.List[str] = []
        generation = self.read_generation() if self.backend == "nft" else None
        for key in self._changed_groups(before, after):
            family, table = key.split(" ")
            text, origin = restore_text(table, before["tables"][key], after["tables"][key], self._sources(key),
                                        self._inputs(key))
            try:
                self._write(family, table, text, origin, f"writing the {key} table")
            except IptablesError as err:
                undone = self._revert(done, before, after)
                note = f" (the {', '.join(undone)} tables written before it were put back as they were)" if undone else ""
                raise IptablesError(f"{err}{note}") from None
            done.append(key)
        # one nf_tables transaction per iptables-nft-restore run: this many more, and no other writer's
        self.committed_alone = generation is not None and self.read_generation() == generation + len(done)
        old_files: t.Dict[str, t.Any] = {}
        if self.persist:
            old_files = self._write_files(before["files"], after["files"])
        if self.confirm_timeout and not self.module.check_mode:
            self.rollback = self._arm_rollback(done, before, after, old_files)

    def verify(self, wanted: t.Dict[str, t.Any]) -> None:
        if self.committed_alone and all(s.cached or s.state == "absent" for s in self.specs):
            # only our restores were committed, of rules that iptables-save printed back exactly so before
            self.verified = "generation"
            if self.persist:
                files = self._read_files()
                if files != wanted["files"]:
                    raise VerifyError(self.mismatch(dict(wanted, files=files), wanted))
            return
        actual = self.current()
        self.verified = "re-read"
        if not self.equal(actual, wanted) and not self._take_kernel_spelling(actual, wanted):
            raise VerifyError(self.mismatch(actual, wanted))

    def _take_kernel_spelling(self, actual: t.Dict[str, t.Any], wanted: t.Dict[str, t.Any]) -> bool:
        """Where the normaliser predicted the printed form (no scratch namespace), a read-back that differs
        from the prediction in spelling only - the same owned chains with as many rules, the same jumps in the
        same places - is the form of what was just applied: it becomes the wanted state (and is remembered),
        so that the next run finds nothing to change. Anything else is a real difference."""
        guessed = {(s.key, s.chain) for s in self.specs if s.source == "normaliser"}
        if not guessed or actual["files"] != wanted["files"]:
            return False
        for key in self.groups:
            a, w = actual["tables"][key], wanted["tables"][key]
            for c, want in w["chains"].items():
                got = a["chains"].get(c)
                if got != want and ((key, c) not in guessed or got is None or want is None or len(got) != len(want)):
                    return False
            for b, want in w["jumps"].items():
                got = a["jumps"].get(b, [])
                if [i for i, _t in got] != [i for i, _t in want] or any(
                        g != wt and (key, jump_target(g)) not in guessed for (_i, g), (_j, wt) in zip(got, want)):
                    return False
        for s in self.specs:
            if s.source == "normaliser":
                table = actual["tables"][s.key]
                jumps = [r for b in s.jump_from for _i, r in table["jumps"].get(b, []) if jump_target(r) == s.chain]
                s.take(list(table["chains"][s.chain]), jumps[0] if jumps else s.jump, "normaliser")
                self._remember(s)
        wanted["tables"] = actual["tables"]
        return True

    def _revert(self, done: t.List[str], before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any]) -> t.List[str]:
        undone = []
        for key in reversed(done):
            family, table = key.split(" ")
            text, origin = restore_text(table, after["tables"][key], before["tables"][key])
            try:
                self._write(family, table, text, origin, f"putting the {key} table back")
                undone.append(key)
            except IptablesError:
                pass
        return undone

    # -- show
    def render(self, state: t.Mapping[str, t.Any]) -> str:
        out: t.List[str] = []
        for key, g in state["tables"].items():
            lines = []
            for c, rules in g["chains"].items():
                if rules is None:
                    continue
                lines.append(f":{c}")
                lines += [f"-A {c} {r}" for r in rules]
            for b, ours in g["jumps"].items():
                lines += [f"-I {b} {i} {text}" for i, text in ours]
            if lines:
                out.append(f"# {key} ({self.backend})")
                out += lines
        for path, content in sorted(state["files"].items()):
            if content is None:
                continue
            digest = hashlib.sha256(json.dumps(content).encode()).hexdigest()[:12]
            out.append(f"# persisted: {path} ({digest})")
        return "\n".join(out) + ("\n" if out else "")

    def mismatch(self, actual: t.Mapping[str, t.Any], wanted: t.Mapping[str, t.Any]) -> str:
        for key in self.groups:
            a, w = actual["tables"][key], wanted["tables"][key]
            for s in self.groups[key]:
                got, want = a["chains"].get(s.chain), w["chains"].get(s.chain)
                if got == want:
                    continue
                if got is None or want is None:
                    return f"the {key} chain {s.chain} is {'missing' if got is None else 'still there'} after the change"
                for k in range(max(len(got), len(want))):
                    g = got[k] if k < len(got) else "(nothing)"
                    wt = want[k] if k < len(want) else "(nothing)"
                    if g != wt:
                        src = s.sources[k] if k < len(s.sources) else None
                        given = f" written as '{s.given[src]}'" if src is not None and isinstance(s.given[src], str) else ""
                        where = s.origin(src) if src is not None else s.chain
                        return (f"the rules were applied, but iptables-save prints {where}{given} as '{g}', not as "
                                f"'{wt}'; write the rule the way iptables-save prints it so that the next run finds "
                                "nothing to change")
            for b in a["jumps"]:
                if a["jumps"][b] != w["jumps"].get(b):
                    return (f"the jump rules in the {key} chain {b} are {a['jumps'][b]} after the change, not "
                            f"{w['jumps'].get(b)} (did another program change {b} at the same time?)")
        return "the persisted files differ from the ones just written"

    def result(self, before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any], changed: bool) -> t.Dict[str, t.Any]:
        chains = []
        for s in self.specs:
            b = before["tables"][s.key]["chains"].get(s.chain)
            a = after["tables"][s.key]["chains"].get(s.chain)
            bj = {k: v for k, v in before["tables"][s.key]["jumps"].items() if any(jump_target(x[1]) == s.chain for x in v)}
            aj = {k: v for k, v in after["tables"][s.key]["jumps"].items() if any(jump_target(x[1]) == s.chain for x in v)}
            chains.append({"ip_version": s.family, "table": s.table, "chain": s.chain, "state": s.state,
                           "rules": len(a or []), "changed": a != b or aj != bj,
                           "canonical_source": s.source or None})
        if not changed or self.verified == "re-read":
            # iptables-save printed these rules exactly so: remember them
            for key, value in self._pending_cache.values():
                self.cache.put(key, value)
        res: t.Dict[str, t.Any] = {"backend": self.backend, "backend_reason": self.reason, "chains": chains,
                                   "mixed_backends": self.mixed, "verified": self.verified,
                                   "scratch_namespace": self.no_scratch or ("used" if any(
                                       s.source == "scratch namespace" for s in self.specs) else "not needed")}
        if self.persist:
            res["persisted"] = sorted(p for p, c in after["files"].items() if c is not None)
        if self.rollback:
            res["rollback"] = self.rollback
        return res

    # -- persistence: one rules file and one unit per owned chain
    def _paths(self, s: ChainSpec) -> t.Tuple[str, str, str]:
        name = f"{s.family}-{s.table}-{s.chain}"
        unit = f"kubenode-iptables-{name}.service"
        return (os.path.join(self.persist_dir, f"{name}.rules"), os.path.join(self.unit_dir, unit),
                os.path.join(self.unit_dir, WANTS, unit))

    def _read_files(self) -> t.Dict[str, t.Any]:
        out: t.Dict[str, t.Any] = {}
        for s in self.specs:
            rules, unit, link = self._paths(s)
            for path in (rules, unit):
                try:
                    with open(path, encoding="utf-8") as f:
                        out[path] = f.read()
                except FileNotFoundError:
                    out[path] = None
                except OSError as exc:
                    raise IptablesError(f"cannot read {path}: {exc.strerror}; nothing was changed") from None
            out[link] = {"link": os.readlink(link)} if os.path.islink(link) else None
        return out

    def _wanted_files(self) -> t.Dict[str, t.Any]:
        out: t.Dict[str, t.Any] = {}
        for s in self.specs:
            rules, unit, link = self._paths(s)
            if s.state == "absent":
                out.update({rules: None, unit: None, link: None})
                continue
            out[rules] = self._rules_file(s)
            out[unit] = self._unit_file(s, rules)
            out[link] = {"link": unit}
        return out

    def _rules_file(self, s: ChainSpec) -> str:
        lines = [f"# {s.chain} ({s.key}, {self.backend} backend), owned by kubenode.dataplane.iptables_ruleset.",
                 "# Restored at boot with iptables-restore --noflush: only this chain and the jumps into it.",
                 f"*{s.table}", f":{s.chain} - [0:0]"]
        lines += [f"-A {s.chain} {r}" for r in s.inputs]
        for b in s.jump_from:
            # at boot the built-in chains are (nearly) empty: first or last is where a position ends up
            lines.append(f"-I {b} 1 {s.jump_line}" if s.jump_position > 0 else f"-A {b} {s.jump_line}")
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def _unit_file(self, s: ChainSpec, rules: str) -> str:
        ipt = self.tools.prog(s.family)
        restore = self.tools.prog(s.family, "-restore")
        pre = [f"ExecStartPre=-{_unit_argv([ipt, '-w', str(self.wait), '-t', s.table, '-D', b] + split_words(s.jump_line))}"
               for b in s.jump_from]
        return "\n".join([
            "# Managed by kubenode.dataplane.iptables_ruleset: restores one owned chain, nothing else.",
            "[Unit]",
            f"Description=kubenode.dataplane iptables chain {s.chain} ({s.key}, {self.backend})",
            "DefaultDependencies=no",
            "Wants=network-pre.target",
            "Before=network-pre.target shutdown.target",
            "After=local-fs.target",
            "Conflicts=shutdown.target",
            "",
            "[Service]",
            "Type=oneshot",
            "RemainAfterExit=yes",
            # a restart must not add a second jump: remove the one a previous start inserted
            *pre,
            f"ExecStart={_unit_argv([restore, '-w', str(self.wait), '--noflush', rules])}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ])

    def _write_files(self, old: t.Mapping[str, t.Any], new: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
        previous = {}
        units_changed = False
        for path, content in new.items():
            if old.get(path) == content:
                continue
            previous[path] = old.get(path)
            write_file(self.module, path, content)
            units_changed = units_changed or path.endswith(".service")
        if units_changed and self.unit_dir == UNIT_DIR and os.path.isdir("/run/systemd/system"):
            systemctl = self.runner.which("systemctl", required=False)
            if systemctl:
                self.runner.run([systemctl, "daemon-reload"], what="reloading systemd units")
        return previous

    # -- commit-confirmed rollback
    def _arm_rollback(self, done: t.List[str], before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any],
                      old_files: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
        groups = []
        for key in reversed(done):
            family, table = key.split(" ")
            text, _origin = restore_text(table, after["tables"][key], before["tables"][key])
            groups.append({"argv": self.tools.restore_argv(family), "text": text})
        token = secrets.token_hex(8)
        return arm(token, self.confirm_timeout, groups, dict(old_files))


# ---------------------------------------------------------------- one task at a time per network namespace

class NetnsLock:
    """Serialises this collection's iptables tasks within one network namespace.

    iptables-restore -w waits for the xtables lock around each write, but two tasks that read the
    same chains before either writes would both insert the jump rule; holding this lock from the
    first read to the check after the write makes the second task see the first one's result.
    """

    def __init__(self, wait: int, run_dir: str = RUN_DIR) -> None:
        self.wait = wait
        try:
            ident = os.stat("/proc/self/ns/net").st_ino
        except OSError:
            ident = 0
        self.path = os.path.join(run_dir, f"iptables-{ident}.lock")
        self.fd: t.Optional[int] = None

    def __enter__(self) -> "NetnsLock":
        import fcntl
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise IptablesError(f"another kubenode.dataplane iptables task in this network namespace held "
                                        f"{self.path} for more than {self.wait} seconds; nothing was changed") from None
                time.sleep(0.05)

    def __exit__(self, *exc: t.Any) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------- files

def write_file(module: t.Any, path: str, content: t.Any) -> None:
    """Write (atomically), link or remove one file."""
    if content is None:
        if os.path.lexists(path):
            os.unlink(path)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if isinstance(content, dict):
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}")
        os.symlink(content["link"], tmp)
        os.replace(tmp, path)
        return
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
    os.chmod(tmp, 0o644)
    if module is not None:
        module.atomic_move(tmp, path)
    else:
        os.replace(tmp, path)


def _unit_argv(argv: t.Sequence[str]) -> str:
    """A command line for ExecStart=: systemd's own quoting, % and $ escaped."""
    out = []
    for a in argv:
        a = a.replace("%", "%%").replace("$", "$$")
        if a and not any(c in a for c in " \t\"'\\;"):
            out.append(a)
        else:
            out.append('"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


# ---------------------------------------------------------------- commit-confirmed rollback

# Runs detached from the module (new session, no inherited pipes) so that it outlives the task
# and the connection: after the deadline, unless the pending file was claimed by a confirmation,
# it puts the previous owned chains and files back. Self-contained on purpose: the collection's
# code is not on the node once the module has exited.
WATCHER = r"""
import json, os, subprocess, sys, time
path = sys.argv[1]
with open(path) as f:
    doc = json.load(f)
time.sleep(max(0.0, doc["deadline"] - time.time()))
claim = path + ".rollback"
try:
    os.rename(path, claim)
except OSError:
    sys.exit(0)
results = []
env = dict(os.environ, LC_ALL="C")
for g in doc["groups"]:
    p = subprocess.run(g["argv"], input=g["text"].encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    results.append({"argv": g["argv"], "rc": p.returncode, "stderr": p.stderr.decode(errors="replace")})
for fpath, content in doc["files"].items():
    try:
        if content is None:
            if os.path.lexists(fpath):
                os.unlink(fpath)
        elif isinstance(content, dict):
            tmp = fpath + ".kn-rollback"
            os.symlink(content["link"], tmp)
            os.replace(tmp, fpath)
        else:
            tmp = fpath + ".kn-rollback"
            with open(tmp, "w") as f:
                f.write(content)
            os.replace(tmp, fpath)
    except OSError as exc:
        results.append({"file": fpath, "error": str(exc)})
with open(path + ".done", "w") as f:
    json.dump({"rolled_back_at": time.time(), "results": results}, f)
os.unlink(claim)
try:
    os.unlink(path + ".pid")
except OSError:
    pass
"""


def pending_path(token: str, run_dir: str = RUN_DIR) -> str:
    if not re.match(r"^[0-9a-f]{16}$", token or ""):
        raise IptablesError(f"confirm: '{token}' is not a rollback token returned by this module; nothing was changed")
    return os.path.join(run_dir, f"iptables-rollback-{token}.json")


def arm(token: str, timeout: int, groups: t.List[t.Dict[str, t.Any]], files: t.Dict[str, t.Any],
        run_dir: str = RUN_DIR) -> t.Dict[str, t.Any]:
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    path = pending_path(token, run_dir)
    deadline = time.time() + timeout
    doc = {"deadline": deadline, "groups": groups, "files": files}
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".pending.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
    # the one program not started through the Runner: it must outlive this module, so it gets no
    # pipes to wait for and a session of its own
    proc = subprocess.Popen([sys.executable, "-c", WATCHER, path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                            start_new_session=True, cwd="/")
    with open(path + ".pid", "w", encoding="ascii") as f:
        f.write(str(proc.pid))
    return {"token": token, "timeout": timeout, "deadline": deadline, "pid": proc.pid, "confirmed": False}


def confirm(token: str, run_dir: str = RUN_DIR) -> t.Dict[str, t.Any]:
    """Cancel a pending rollback: the applied chains stay."""
    path = pending_path(token, run_dir)
    claim = path + ".confirmed"
    try:
        os.rename(path, claim)
    except FileNotFoundError:
        done = path + ".done"
        if os.path.exists(done):
            raise IptablesError(f"too late to confirm: the rollback {token} already ran and put the previous chains "
                                "back") from None
        raise IptablesError(f"there is no pending rollback {token} on this host; nothing was changed") from None
    try:
        with open(claim, encoding="utf-8") as f:
            doc = json.load(f)
    finally:
        os.unlink(claim)
    try:
        with open(path + ".pid", encoding="ascii") as f:
            stop_watcher(int(f.read().strip() or 0), token)
        os.unlink(path + ".pid")
    except (OSError, ValueError):
        pass
    return {"token": token, "confirmed": True, "deadline": doc.get("deadline")}


def stop_watcher(pid: int, token: str) -> None:
    """End a confirmed rollback's sleeping watcher, only if that pid really is it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return
    if f"iptables-rollback-{token}.json".encode() in cmdline:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
