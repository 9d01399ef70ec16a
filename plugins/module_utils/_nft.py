# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nftables backend: tables the collection owns, compared in the kernel's own words.

How "equal" is decided: the current owned tables are read with ``nft list table`` (the kernel's
view, printed by nft). The desired script is turned into the same kind of text by loading it
into a scratch network namespace (``unshare --net``) and listing it there. Where nft finds
interfaces missing there, the script is loaded again in a named one with a stand-in for each
name nft reports, with the host's interface index: the kernel keeps interfaces as indexes and
nft lists them in index order. Both texts are then normalised for what changes without anyone
changing the ruleset: counter values, quota usage, timeouts counting down, elements the packet
path adds to dynamic sets, and the order of sets and chains in a table. Formatting, element
order, defaults (``priority 0`` vs ``priority filter``) and handles never reach the comparison
because the kernel and nft settle them identically on both sides.

The canonical form of a script only depends on the script, nft's version and the kernel, so it
is remembered in a small cache (/var/cache/kubenode-dataplane/nft): a no-op run costs one
``nft list table`` per owned table. See docs/performance/nft.md for the measurements behind this.

Apply is one ``nft -f`` transaction: for each owned table ``table X`` + ``delete table X``
(works whether or not it exists), then the desired script by ``include``, so nft's messages
point at the lines of the user's script. No other table is named, so no other table changes.

Dry run and verification, where this backend departs on purpose from the plain converge loop:

- ``nft -c`` runs in check mode and before arming a rollback (``confirm_timeout``). In other runs
  ``nft -f`` is the dry run: the kernel checks the whole batch before it commits any of it, and
  rejects it as a whole with the same message ``nft -c`` would give, so a separate ``nft -c``
  would do the same work twice (about as long as the apply itself).
- The verifying re-read after an apply is a full ``nft list table`` when the script's kernel
  form was just taken from a scratch namespace; the canonical cache is filled only once that
  re-read matched, so a cache entry means "this script, loaded into a live kernel, reads back
  as this". Later applies of a cached script read the kernel's nf_tables generation instead
  (``NFT_MSG_GETGEN``, one netlink round trip): the kernel adds one per committed transaction,
  so "before + 1" proves that ``nft -f`` committed our transaction and that nobody else's came
  between. Any other value (another writer, no netlink) falls back to the full re-read. Listing
  a big table costs more than loading it (docs/performance/nft.md), hence the difference.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
import typing as t

from dataclasses import dataclass, field

from ansible_collections.kubenode.dataplane.plugins.module_utils._cache import CanonicalCache
from ansible_collections.kubenode.dataplane.plugins.module_utils._nfgen import ruleset_generation
from ansible_collections.kubenode.dataplane.plugins.module_utils._confirm import STATE_DIR as ROLLBACK_DIR, Rollbacks
from ansible_collections.kubenode.dataplane.plugins.module_utils import _nft_schema
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import Backend, VerifyError
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import CommandError, DataplaneError, Result, Runner
from ansible_collections.kubenode.dataplane.plugins.module_utils._scratch import Scratch, run_once

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
TABLE_RE = re.compile(r"^(ip|ip6|inet|arp|bridge|netdev) ([A-Za-z_][A-Za-z0-9_./-]{0,255})$")

# Tables other programs create and manage on Kubernetes nodes.
FOREIGN_NAMES = {
    "kube-proxy": "kube-proxy's nftables mode",
    "calico": "Calico's nftables dataplane",
    "firewalld": "firewalld",
    "docker": "Docker",
    "docker-bridges": "Docker's nftables firewall backend",
}
# iptables-nft keeps the classic tables in these families; kube-proxy (iptables mode), Calico and
# Docker write into them through iptables
XTABLES_NAMES = ("filter", "nat", "mangle", "raw", "security", "broute")
XTABLES_FAMILIES = ("ip", "ip6", "arp", "bridge")
IPTABLES_NFT_WARNING = "is managed by iptables-nft"

CACHE_DIR = "/var/cache/kubenode-dataplane/nft"
# the desired form of a table not yet known: read back from the kernel after the apply
UNKNOWN = "# the kernel's form of this table is read back after the apply\n"

# top-level commands that may appear in content, besides the ones that name an owned table
SCRIPT_VERBS = ("add", "create", "insert", "replace", "delete", "destroy", "flush")
SCRIPT_OBJECTS = (
    "table", "chain", "rule", "set", "map", "element", "counter", "quota", "limit", "flowtable", "ct",
    "secmark", "synproxy",
)


class ScriptError(DataplaneError):
    """The script is not acceptable (before nft ever sees it)."""


class NftError(DataplaneError):
    """nft rejected a script; the message carries nft's own text with the line."""


def parse_table(ref: str) -> str:
    """'inet  foo' -> 'inet foo'; raises ScriptError for anything else."""
    norm = " ".join(str(ref).split())
    if not TABLE_RE.match(norm):
        raise ScriptError(
            f"'{ref}' is not a table reference: write the family ({', '.join(FAMILIES)}) and the name, "
            "for example 'inet kubenode_firewall'; nothing was changed"
        )
    return norm


# ---------------------------------------------------------------- the script lexer


_IN_BLOCK_RE = re.compile(r'["#{}]')


@dataclass
class Statement:
    line: int
    tokens: t.List[str]


def statements(text: str) -> t.List[Statement]:
    """Top-level statements of an nft script with their first line; words inside braces are skipped.

    Enough of nft's syntax to see which command each statement is and which table it names:
    strings, comments, line continuations, ';' and newlines as separators outside braces.
    """
    out: t.List[Statement] = []
    tokens: t.List[str] = []
    word: t.List[str] = []
    line = 1
    start = 0
    depth = 0
    i = 0
    n = len(text)

    def end_word() -> None:
        if word:
            tokens.append("".join(word))
            word.clear()

    def end_statement() -> None:
        end_word()
        if tokens:
            out.append(Statement(start, list(tokens)))
            tokens.clear()

    while i < n:
        if depth > 0:
            # inside a block only strings, comments and braces matter: jump to the next one
            m = _IN_BLOCK_RE.search(text, i)
            j = m.start() if m else n
            line += text.count("\n", i, j)
            i = j
            if i >= n:
                break
        c = text[i]
        if c == '"':
            j = text.find('"', i + 1)
            j = n - 1 if j < 0 else j
            if depth == 0:
                if not tokens and not word:
                    start = line
                word.append(text[i:j + 1])
            line += text.count("\n", i, j + 1)
            i = j + 1
            continue
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "\\" and text.startswith("\n", i + 1):
            line += 1
            i += 2
            continue
        if c == "{":
            end_word()
            if depth == 0:
                if not tokens:
                    start = line
                tokens.append("{")
            depth += 1
        elif c == "}":
            end_word()
            depth = max(depth - 1, 0)
            if depth == 0:
                tokens.append("}")
        elif c in "\n;" and depth == 0:
            end_statement()
            if c == "\n":
                line += 1
        elif c.isspace():
            if depth == 0:
                end_word()
            if c == "\n":
                line += 1
        elif depth == 0:
            if not tokens and not word:
                start = line
            word.append(c)
        i += 1
    end_statement()
    return out


def _table_of(tokens: t.List[str]) -> t.Tuple[t.Optional[str], str]:
    """The table a command names (or None) and an error text when the command is not allowed."""
    words = [w for w in tokens if w not in ("{", "}")]
    if not words:
        return None, ""
    head = words[0]
    if head in ("define", "redefine", "undefine"):
        return None, ""
    if head in SCRIPT_VERBS:
        rest = words[1:]
        if head == "flush" and rest[:1] == ["ruleset"]:
            return None, "'flush ruleset' would delete every table, other owners' included"
    elif head in SCRIPT_OBJECTS:
        rest = words  # nft's implicit "add"
    else:
        return None, f"'{head}' is not a definition (only tables and their contents can be declared)"
    if not rest or rest[0] not in SCRIPT_OBJECTS:
        return None, f"'{' '.join(words[:3])}' is not a command on a table"
    rest = rest[1:]
    if words[0] == "ct" or (len(words) > 1 and words[1] == "ct"):
        rest = rest[1:]  # ct helper|timeout|expectation
    family = "ip"
    if rest and rest[0] in FAMILIES:
        family, rest = rest[0], rest[1:]
    if not rest:
        return None, f"'{' '.join(words[:3])}' names no table"
    name = rest[0]
    if not TABLE_RE.match(f"{family} {name}"):
        return None, f"the table name '{name}' must be written literally"
    return f"{family} {name}", ""


def tables_named(text: str, label: str = "content") -> t.List[str]:
    """Every table a script names, in order of appearance; ScriptError for commands reaching elsewhere."""
    named: t.List[str] = []
    problems = []
    for st in statements(text):
        table, problem = _table_of(st.tokens)
        if problem:
            problems.append(f"{label} line {st.line}: {problem}")
        elif table and table not in named:
            named.append(table)
    if problems:
        raise ScriptError("; ".join(problems) + "; nothing was changed")
    return named


# ---------------------------------------------------------------- stand-in interfaces for the scratch namespace

# nft resolves interface names to indexes while it reads a script (iif, oif, elements of type
# iface_index, dup and fwd devices) and says so for a name the namespace lacks, with carets under
# the name in the echoed line. It reports the first such name of each set, map or concatenation and
# at most 10 errors in all, so a script can take several rounds; each round loads the script again.
NO_INTERFACE = ": Error: Interface does not exist"
# what a kernel that wants hook devices to exist answers for a netdev chain or flowtable without them
# (6.18 keeps netdev chains of missing devices, and lists them the same)
NO_SUCH_OBJECT = ": Error: Could not process rule: No such file or directory"
STAND_IN_ROUNDS = 64
# a chain or flowtable as nft --debug=netlink prints it: "... hook ingress prio 0 dev eth0 " or
# "... dev {  eth0  eth1  } "
_HOOK_DEVICES_RE = re.compile(r" dev (\{[^{}]*\}|\S+) *$")


def missing_interfaces(err: str, path: str) -> t.List[str]:
    """The names nft marked as 'Interface does not exist' in the script at ``path``, in its order."""
    found: t.List[str] = []
    lines = err.split("\n")
    for i, line in enumerate(lines[:-2]):
        if not (line.startswith(path + ":") and line.endswith(NO_INTERFACE)):
            continue
        # nft writes the marks byte by byte under the line (tabs kept), so they index its bytes
        source, marks = lines[i + 1].encode(), lines[i + 2].encode()
        token = bytes(source[k] for k in range(min(len(source), len(marks))) if marks[k:k + 1] == b"^")
        name = token.decode(errors="replace")
        if len(name) > 1 and name[0] == name[-1] == '"':
            name = name[1:-1]
        if name and name not in found:
            found.append(name)
    return found


def hook_devices(debug: str) -> t.List[str]:
    """The hook devices of the chains and flowtables in ``nft --debug=netlink`` output."""
    found: t.List[str] = []
    for line in debug.splitlines():
        # rules ("  [ meta load iif => reg 1 ]") and set elements are indented; objects are not
        if not line or line[0].isspace():
            continue
        m = _HOOK_DEVICES_RE.search(line)
        if m:
            for name in m.group(1).strip("{}").split():
                if name not in found:
                    found.append(name)
    return found


def host_interfaces() -> t.Dict[str, int]:
    """This network namespace's interfaces and their indexes."""
    return {name: index for index, name in socket.if_nameindex()}


class StandIns(Scratch):
    """A scratch namespace whose stand-in interfaces have the index of the host's interface of that name.

    The kernel keeps an interface in a set, map or concatenation as its index, and nft lists such
    elements in index order: a stand-in with another index than on the host lists ``{ "lan0", "lan1" }``
    in another order than the host does, and the table would never compare equal.
    """

    def __init__(self, runner: Runner, host: t.Dict[str, int]) -> None:
        super().__init__(runner)
        self.host = host
        self.made: t.List[str] = []
        # the other stand-ins and every peer take indexes that no host interface has
        self._free = max(host.values(), default=1) + 1

    def _index(self) -> int:
        self._free += 1
        return self._free - 1

    def stand_in(self, interface: str, index: t.Optional[int] = None, peer_index: t.Optional[int] = None) -> None:
        index = index or self.host.get(interface) or self._index()
        super().stand_in(interface, index, peer_index or self._index())
        self.made.append(interface)


# ---------------------------------------------------------------- the kernel's listing


def split_listing(text: str) -> t.Dict[str, str]:
    """'nft list table' output (one or several tables) -> {'inet foo': text of the table}."""
    tables: t.Dict[str, str] = {}
    current = None
    buf: t.List[str] = []
    for line in text.splitlines():
        if current is None:
            if line.startswith("table ") and line.endswith("{"):
                current = " ".join(line.split()[1:3])
                buf = [line]
            continue
        buf.append(line)
        if line == "}":
            tables[current] = "\n".join(buf) + "\n"
            current = None
    return tables


_COUNTER_RE = re.compile(r"\bcounter packets \d+ bytes \d+")
_NAMED_COUNTER_RE = re.compile(r"^(\t+)packets \d+ bytes \d+$")
_USED_RE = re.compile(r" used \d+ [kmg]?bytes")
_EXPIRES_RE = re.compile(r" expires [0-9dhms]+")


def _outside_strings(line: str) -> str:
    """Apply the volatile-value rewrites to the parts of a line that are not quoted strings."""
    if '"' not in line:
        return _rewrite(line)
    parts = line.split('"')
    for k in range(0, len(parts), 2):
        parts[k] = _rewrite(parts[k])
    return '"'.join(parts)


def _rewrite(s: str) -> str:
    if "packets" in s:
        s = _COUNTER_RE.sub("counter packets 0 bytes 0", s)
        s = _NAMED_COUNTER_RE.sub(r"\1packets 0 bytes 0", s)
    if " used " in s:
        s = _USED_RE.sub("", s)
    if " expires " in s:
        s = _EXPIRES_RE.sub("", s)
    return s


def _blocks(table_text: str) -> t.Tuple[str, t.List[str], t.List[t.Tuple[str, t.List[str]]]]:
    """Header, table-level lines and the (key, lines) of each set, map, chain, object of a table."""
    lines = table_text.rstrip("\n").split("\n")
    header, body = lines[0], lines[1:-1]
    attrs: t.List[str] = []
    blocks: t.List[t.Tuple[str, t.List[str]]] = []
    current: t.Optional[t.List[str]] = None
    for line in body:
        if current is not None:
            current.append(line)
            if line == "\t}":
                current = None
            continue
        if not line.strip():
            continue
        if line.endswith("{") and line.startswith("\t") and not line.startswith("\t\t"):
            current = [line]
            blocks.append((line.strip()[:-1].strip(), current))
        else:
            attrs.append(line)
    return header, attrs, blocks


def _drop_elements(block: t.List[str]) -> t.List[str]:
    out = []
    skipping = False
    depth = 0
    for line in block:
        if not skipping and line.startswith("\t\telements = {"):
            skipping = True
            depth = 0
        if skipping:
            depth += line.count("{") - line.count("}")
            if depth <= 0:
                skipping = False
            continue
        out.append(line)
    return out


def normalise(table_text: str) -> str:
    """The kernel's listing of one table without what changes by itself (see the module docstring)."""
    header, attrs, blocks = _blocks(table_text)
    out = [header] + attrs
    for n, (key, block) in enumerate(blocks):
        kind = key.split(" ", 1)[0]
        if kind in ("set", "map") and any(ln.startswith("\t\tflags ") and "dynamic" in ln for ln in block):
            # filled by the packet path ("add @set", "update @set"), not by the ruleset
            block = _drop_elements(block)
        if n or attrs:
            out.append("")
        out.extend(_outside_strings(ln) for ln in block)
    out.append("}")
    return "\n".join(out) + "\n"


def compare_key(normalised: t.Optional[str]) -> t.Optional[str]:
    """Order of sets, maps, objects and chains in a table is not significant: sort them."""
    if normalised is None:
        return None
    header, attrs, blocks = _blocks(normalised)
    parts = [header] + sorted(attrs)
    for _key, block in sorted(blocks, key=lambda kb: kb[0]):
        parts.extend(block)
    return "\n".join(parts)


def map_nft_error(err: str, paths: t.Dict[str, str]) -> str:
    """nft's message with our temporary file names replaced by what the user knows them as."""
    keep = []
    for line in err.rstrip().splitlines():
        if line.startswith("In file included from") or line.startswith("                 from"):
            continue
        for path, label in paths.items():
            line = line.replace(path, label)
        keep.append(line.rstrip())
    return "\n".join(keep)


# ---------------------------------------------------------------- the canonical-form cache


# ---------------------------------------------------------------- persistence

CONF_FLUSH_BEGIN = "# BEGIN kubenode.dataplane.nft_ruleset: instead of flush ruleset"
CONF_INCLUDE_BEGIN = "# BEGIN kubenode.dataplane.nft_ruleset: include"
CONF_END = "# END kubenode.dataplane.nft_ruleset"
FLUSH_LINE_RE = re.compile(r"^\s*flush\s+ruleset\s*;?\s*(#.*)?$")
DROPIN = "/etc/systemd/system/nftables.service.d/kubenode-dataplane.conf"
SERVICE = "nftables.service"
SERVICE_KEY = f"systemd:{SERVICE}"

DROPIN_TEXT = """\
# Managed by kubenode.dataplane.nft_ruleset.
# Debian's nftables.service runs "nft flush ruleset" when it stops (and so on every restart),
# which would delete kube-proxy's, Calico's and Docker's live tables along with the host's own.
# Stopping the service now leaves the ruleset as it is; starting or reloading it loads
# /etc/nftables.conf, which replaces only the tables it defines.
[Service]
ExecStop=
"""


def table_file_name(table: str) -> str:
    family, name = table.split(" ", 1)
    return f"kubenode-{family}-{name}.nft"


def table_file_text(table: str, canonical: str) -> str:
    return (
        "#!/usr/sbin/nft -f\n"
        f"# Managed by kubenode.dataplane.nft_ruleset: table {table}. Changes made here are replaced on the next run.\n"
        "# Loading this file replaces this one table and nothing else (never 'flush ruleset').\n"
        f"table {table}\n"
        f"delete table {table}\n"
        f"{canonical}"
    )


def managed_conf(text: t.Optional[str], include_glob: str) -> str:
    """/etc/nftables.conf made to load the owned tables and to stop flushing other owners' tables.

    Every top-level 'flush ruleset' becomes a managed block that replaces, one by one, the tables
    the file itself defines after it (what the flush did for them); the owned tables' files are
    included at the end. Other content stays as it is. Idempotent: applied to its own output it
    returns it unchanged.
    """
    if text is None:
        text = "#!/usr/sbin/nft -f\n"
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    kept: t.List[str] = []
    flush_at: t.Optional[int] = None
    skipping = False
    for line in lines:
        if skipping:
            if line.strip() == CONF_END:
                skipping = False
            continue
        if line.strip() in (CONF_FLUSH_BEGIN, CONF_INCLUDE_BEGIN):
            if line.strip() == CONF_FLUSH_BEGIN and flush_at is None:
                flush_at = len(kept)
            skipping = True
            continue
        if FLUSH_LINE_RE.match(line):
            if flush_at is None:
                flush_at = len(kept)
            continue
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    out = list(kept)
    if flush_at is not None:
        defined = list(_defined_tables("\n".join(kept[flush_at:])))
        block = [
            CONF_FLUSH_BEGIN,
            '# "flush ruleset" was here. It deleted every table each time this file was loaded (boot,',
            "# systemctl reload nftables), kube-proxy's, Calico's and Docker's live tables included. Instead,",
            "# the tables this file defines below are replaced one by one; other owners' tables stay untouched.",
        ]
        for table in defined:
            block += [f"table {table}", f"delete table {table}"]
        block.append(CONF_END)
        out[flush_at:flush_at] = block
    out += [
        "",
        CONF_INCLUDE_BEGIN,
        "# the tables owned by kubenode.dataplane.nft_ruleset, one file each",
        f'include "{include_glob}"',
        CONF_END,
    ]
    return "\n".join(out) + "\n"


def _defined_tables(text: str) -> t.List[str]:
    found = []
    for st in statements(text):
        words = [w for w in st.tokens if w not in ("{", "}")]
        if words[:1] == ["table"] or words[:2] in (["add", "table"], ["create", "table"]):
            rest = words[1:] if words[0] == "table" else words[2:]
            family = rest[0] if rest and rest[0] in FAMILIES else "ip"
            name = rest[1] if rest and rest[0] in FAMILIES and len(rest) > 1 else (rest[0] if rest else "")
            ref = f"{family} {name}"
            if TABLE_RE.match(ref) and ref not in found:
                found.append(ref)
    return found


# ---------------------------------------------------------------- the backend


@dataclass
class NftState:
    tables: t.Dict[str, t.Optional[str]]  # owned table -> normalised listing, None when absent
    files: t.Dict[str, t.Optional[str]] = field(default_factory=dict)  # path (or systemd:unit) -> content
    raw: t.Dict[str, str] = field(default_factory=dict)  # the kernel's listing as read (rollback snapshots)


@dataclass
class Options:
    tables: t.List[str]
    script: t.Optional[str]
    state: str = "present"
    force: bool = False
    persist: bool = False
    persist_dir: str = "/etc/nftables.d"
    persist_conf: str = "/etc/nftables.conf"
    persist_service: bool = True
    confirm_timeout: t.Optional[int] = None
    canonical_cache: bool = True
    label: str = "content"
    cache_dir: str = CACHE_DIR
    rollback_dir: t.Optional[str] = None


class NftBackend(Backend):
    def __init__(self, module: t.Any, runner: Runner, opts: Options) -> None:
        self.module = module
        self.runner = runner
        self.opts = opts
        self.cache = CanonicalCache(opts.cache_dir, opts.canonical_cache)
        self.timings: t.Dict[str, float] = {}
        self.canonical_source: t.Optional[str] = None
        self.rollback: t.Optional[t.Dict[str, t.Any]] = None
        self.deferred_files = False
        self.written: t.List[str] = []
        self._workdir: t.Optional[str] = None
        self._before: t.Optional[NftState] = None
        self._iptables_nft: t.Set[str] = set()
        # set by canonical(), stored by result() once a live kernel read the script back as this
        self._pending_cache: t.Optional[t.Tuple[str, t.Dict[str, str]]] = None
        self.read_generation: t.Callable[[], t.Optional[int]] = ruleset_generation
        self.host_interfaces: t.Callable[[], t.Dict[str, int]] = host_interfaces
        self.committed_alone = False
        self.verified: t.Optional[str] = None
        self._cache_key = ""
        self._version = ""

    # -------------------------------------------------------- helpers

    def _nft(self) -> str:
        return self.runner.which("nft")

    def _time(self, step: str, since: float) -> None:
        self.timings[step] = round(self.timings.get(step, 0.0) + time.monotonic() - since, 4)

    def workdir(self) -> str:
        if self._workdir is None:
            base = getattr(self.module, "tmpdir", None) or None
            self._workdir = tempfile.mkdtemp(prefix="kubenode-nft-", dir=base)
        return self._workdir

    def _write(self, name: str, text: str) -> str:
        path = os.path.join(self.workdir(), name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def _errors(self, err: str, extra: t.Optional[t.Dict[str, str]] = None) -> str:
        paths = {os.path.join(self.workdir(), "desired.nft"): self.opts.label}
        paths.update(extra or {})
        return map_nft_error(err, paths)

    # -------------------------------------------------------- read

    def read_tables(self) -> t.Tuple[t.Dict[str, t.Optional[str]], t.Dict[str, str]]:
        nft = self._nft()
        tables: t.Dict[str, t.Optional[str]] = {}
        raw: t.Dict[str, str] = {}
        for table in self.opts.tables:
            family, name = table.split(" ", 1)
            res = self.runner.run([nft, "list", "table", family, name], ok_rc=(0, 1), what=f"reading table {table}")
            if res.rc == 1:
                if "No such file or directory" in res.err:
                    tables[table] = None
                    continue
                raise CommandError(res.argv, res.rc, res.out, res.err, f"reading table {table}")
            if IPTABLES_NFT_WARNING in res.err:
                self._iptables_nft.add(table)
            listed = split_listing(res.out).get(table, res.out)
            raw[table] = listed
            tables[table] = normalise(listed)
        return tables, raw

    def current(self) -> NftState:
        since = time.monotonic()
        tables, raw = self.read_tables()
        self._time("read", since)
        files = self.read_files() if self.opts.persist else {}
        return NftState(tables, files, raw)

    def read_files(self) -> t.Dict[str, t.Optional[str]]:
        files: t.Dict[str, t.Optional[str]] = {}
        paths = [os.path.join(self.opts.persist_dir, table_file_name(tb)) for tb in self.opts.tables]
        paths.append(self.opts.persist_conf)
        if self.opts.persist_service:
            paths.append(DROPIN)
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    files[path] = f.read()
            except FileNotFoundError:
                files[path] = None
        if self.opts.persist_service:
            systemctl = self.runner.which("systemctl")
            res = self.runner.run([systemctl, "is-enabled", SERVICE], ok_rc=range(256), what="reading nftables.service")
            files[SERVICE_KEY] = res.out.strip() or "not-found"
        return files

    # -------------------------------------------------------- desired

    def check_ownership(self) -> None:
        if self.opts.force:
            return
        for table in self.opts.tables:
            family, name = table.split(" ", 1)
            owner = FOREIGN_NAMES.get(name)
            if owner is None and family in XTABLES_FAMILIES and name in XTABLES_NAMES:
                owner = "iptables-nft (kube-proxy's iptables mode, Calico and Docker write there)"
            if owner is None and table in self._iptables_nft:
                owner = "iptables-nft (nft says so when listing it)"
            if owner:
                raise ScriptError(
                    f"the table '{table}' belongs to {owner}; refusing to manage it (set force: true to take it over); "
                    "nothing was changed"
                )

    def canonical(self, check_mode: bool, learn: bool = False, fresh: bool = False) -> t.Dict[str, str]:
        """The kernel's listing of the desired script, normalised, per owned table.

        With ``learn`` (the owned tables do not exist, so the apply is certain), a script that is not
        in the cache is not loaded into a scratch namespace: its form is read back from the kernel
        after the apply instead, and the tables are UNKNOWN until then. With ``fresh``, the cache is
        not asked.
        """
        script = self.opts.script or ""
        nft = self._nft()
        since = time.monotonic()
        if not self._version:
            self._version = self.runner.run([nft, "--version"], what="reading nft's version").out.strip()
        key = CanonicalCache.key(self._version, self.opts.tables, script)
        hit = None if fresh else self.cache.get(key)
        self._time("cache", since)
        if hit is not None and set(hit) == set(self.opts.tables):
            self.canonical_source = "cache"
            return hit
        if learn:
            self.canonical_source = "applied"
            self._cache_key = key
            return {tb: UNKNOWN for tb in self.opts.tables}
        since = time.monotonic()
        path = self._write("desired.nft", script)
        commands = f'include "{path}"\n' + "".join(f"list table {tb}\n" for tb in self.opts.tables)
        what = "loading the desired ruleset into a scratch namespace"
        res = run_once(self.runner, [nft, "-i"], data=commands, what=what)
        if res.rc != 0:
            raise CommandError(res.argv, res.rc, res.out, res.err, what)
        hint = ""
        if f"{path}:" in res.err and (NO_INTERFACE in res.err or NO_SUCH_OBJECT in res.err):
            res, hint = self._load_with_stand_ins(path, commands, res)
        self._time("scratch", since)
        listed = split_listing(res.out)
        if path in res.err:
            # the include failed: nft's message for the user's script, without the list commands' echoes
            first = res.err.split("\nError: No such file or directory\nlist table", 1)[0]
            raise NftError(f"nft rejected {self.opts.label}; nothing was changed:\n{self._errors(first)}{hint}")
        missing = [tb for tb in self.opts.tables if tb not in listed]
        if missing:
            raise ScriptError(
                f"{self.opts.label} does not define the table(s) {', '.join(missing)} listed in tables "
                "(use state: absent to remove a table); nothing was changed"
            )
        tables = {tb: normalise(listed[tb]) for tb in self.opts.tables}
        self.canonical_source = "scratch namespace"
        if not check_mode:
            self._pending_cache = (key, tables)
        return tables

    def _load_with_stand_ins(self, path: str, commands: str, first: Result) -> t.Tuple[Result, str]:
        """The script loaded again in a named scratch namespace, with stand-ins for the interfaces nft asked for.

        The names come from nft's own errors, never from reading the script: a text scan takes the
        '.' of ``iif . oif``, a set's name or a word in a comment for an interface. Returns the last
        load and, when the rounds ran out, a hint for the error message.
        """
        nft = self._nft()
        what = "loading the desired ruleset into a scratch namespace with stand-in interfaces"
        res = first
        devices_read = False
        with StandIns(self.runner, self.host_interfaces()) as scratch:
            for _round in range(STAND_IN_ROUNDS):
                wanted = missing_interfaces(res.err, path)
                if not wanted and NO_SUCH_OBJECT in res.err and not devices_read:
                    # a kernel that needs hook devices to exist: nft's parse of the script names them
                    devices_read = True
                    debug = scratch.run([nft, "--debug=netlink", "-c", "-f", path], ok_rc=range(256),
                                        what="reading the hook devices of the desired ruleset")
                    wanted = hook_devices(debug.out)
                new = [name for name in wanted if name != "lo" and name not in scratch.made]
                if not new:
                    return res, ""
                try:
                    for name in new:
                        scratch.stand_in(name)
                except CommandError:
                    # no interface can have that name (ip says why): nor can the host's, nft's error stands
                    return res, ""
                res = scratch.run([nft, "-i"], data=commands, ok_rc=range(256), what=what)
        if not missing_interfaces(res.err, path):
            return res, ""
        return res, (f"\n(the scratch namespace stopped after {STAND_IN_ROUNDS} rounds of stand-in interfaces, "
                     "one round for each interface nft reports missing from a set, map or concatenation)")

    def desired(self, before: NftState) -> NftState:
        self._before = before
        self.check_ownership()
        if self.opts.state == "absent":
            tables: t.Dict[str, t.Optional[str]] = {tb: None for tb in self.opts.tables}
        else:
            # nothing to compare with: the kernel's form can come from the apply itself (the persisted
            # files and a rollback need it before, so not with those)
            learn = (not self.module.check_mode and not self.opts.persist and not self.opts.confirm_timeout
                     and all(before.tables.get(tb) is None for tb in self.opts.tables))
            tables = dict(self.canonical(self.module.check_mode, learn=learn))
            if self.canonical_source == "cache" and any(
                    before.tables.get(tb) is not None and compare_key(before.tables[tb]) != compare_key(tables[tb])
                    for tb in self.opts.tables):
                # the cache is a fast path, not the judge: a remembered form that a live table shows otherwise
                # may be stale (the host's interfaces took other indexes, so sets of them list in another
                # order), so the kernel is asked again before anything is called a change
                tables = dict(self.canonical(self.module.check_mode, fresh=True))
        files: t.Dict[str, t.Optional[str]] = {}
        if self.opts.persist:
            files = self.desired_files(tables, before.files)
            tables_change = any(compare_key(before.tables.get(tb)) != compare_key(tables[tb]) for tb in tables)
            if self.opts.confirm_timeout and tables_change and files != before.files:
                # persisted only once confirmed: a reboot before the confirmation must come back to
                # the last confirmed ruleset, not to the one that may have locked the node out
                self.deferred_files = True
                files = dict(before.files)
        return NftState(tables, files)

    def desired_files(self, tables: t.Dict[str, t.Optional[str]], current: t.Dict[str, t.Optional[str]]) -> t.Dict[str, t.Optional[str]]:
        files: t.Dict[str, t.Optional[str]] = {}
        for table, text in tables.items():
            path = os.path.join(self.opts.persist_dir, table_file_name(table))
            files[path] = table_file_text(table, text) if text is not None else None
        if self.opts.state == "absent":
            # only the owned tables' files go; the include of the (now smaller) set of files stays
            for path, content in current.items():
                files.setdefault(path, content)
            return files
        glob = os.path.join(self.opts.persist_dir, "kubenode-*.nft")
        files[self.opts.persist_conf] = managed_conf(current.get(self.opts.persist_conf), glob)
        if self.opts.persist_service:
            files[DROPIN] = DROPIN_TEXT
            state = current.get(SERVICE_KEY)
            files[SERVICE_KEY] = state if state in ("enabled", "static", "enabled-runtime", "alias") else "enabled"
        return files

    # -------------------------------------------------------- compare, render

    def equal(self, actual: NftState, wanted: NftState) -> bool:
        for table in self.opts.tables:
            if compare_key(actual.tables.get(table)) != compare_key(wanted.tables.get(table)):
                return False
        return actual.files == wanted.files

    def tables_differ(self, a: NftState, b: NftState) -> bool:
        return any(compare_key(a.tables.get(tb)) != compare_key(b.tables.get(tb)) for tb in self.opts.tables)

    def render(self, state: NftState) -> str:
        parts = []
        for table in self.opts.tables:
            text = state.tables.get(table)
            parts.append(text if text is not None else f"# table {table}: absent\n")
        for path, content in sorted(state.files.items()):
            if path == SERVICE_KEY:
                parts.append(f"# {SERVICE}: {content}\n")
            elif content is None:
                parts.append(f"# {path}: absent\n")
            elif path.startswith(self.opts.persist_dir + os.sep):
                digest = hashlib.sha256(content.encode()).hexdigest()[:12]
                parts.append(f"# {path}: {content.count(chr(10))} lines, sha256 {digest}\n")
            else:
                parts.append(f"# --- {path}\n" + content)
        return "".join(parts)

    # -------------------------------------------------------- dry run, apply

    def transaction(self, before: NftState, after: NftState) -> str:
        lines = []
        for table in self.opts.tables:
            lines += [f"table {table}", f"delete table {table}"]
        if self.opts.state == "present":
            lines.append(f'include "{os.path.join(self.workdir(), "desired.nft")}"')
        return "\n".join(lines) + "\n"

    def validate(self, after: NftState) -> None:
        before = self._before or NftState({})
        nft = self._nft()
        if self.tables_differ(before, after):
            if self.opts.state == "present":
                self._write("desired.nft", self.opts.script or "")
            tx = self._write("transaction.nft", self.transaction(before, after))
            if not (self.module.check_mode or self.opts.confirm_timeout):
                # nft -f checks the whole transaction before committing any of it (see the module's docstring)
                return self._validate_files(before, after)
            since = time.monotonic()
            res = self.runner.run([nft, "-c", "-f", tx], ok_rc=range(256), what="dry run (nft -c)")
            self._time("dry_run", since)
            if res.rc != 0:
                raise NftError(f"nft rejected {self.opts.label} in a dry run (nft -c); nothing was changed:\n{self._errors(res.err, {tx: 'transaction'})}")
        return self._validate_files(before, after)

    def _validate_files(self, before: NftState, after: NftState) -> None:
        if self.opts.persist and not self.deferred_files:
            self.check_files(after.files, before.files)

    def check_files(self, files: t.Dict[str, t.Optional[str]], current: t.Dict[str, t.Optional[str]]) -> None:
        """Dry-run the persisted files as nft would load them at boot, from a staging copy."""
        nft = self._nft()
        stage = os.path.join(self.workdir(), "persist")
        os.makedirs(stage, exist_ok=True)
        for table in self.opts.tables:
            path = os.path.join(self.opts.persist_dir, table_file_name(table))
            content = files.get(path)
            if content is None:
                continue
            staged = os.path.join(stage, table_file_name(table))
            with open(staged, "w", encoding="utf-8") as f:
                f.write(content)
        # the other owned tables' files already in place are part of what boot loads
        if os.path.isdir(self.opts.persist_dir):
            for name in os.listdir(self.opts.persist_dir):
                staged = os.path.join(stage, name)
                if name.startswith("kubenode-") and name.endswith(".nft") and not os.path.exists(staged) \
                        and os.path.join(self.opts.persist_dir, name) not in files:
                    with open(os.path.join(self.opts.persist_dir, name), encoding="utf-8") as src, \
                            open(staged, "w", encoding="utf-8") as dst:
                        dst.write(src.read())
        conf = files.get(self.opts.persist_conf)
        if conf is None:
            return
        staged_conf = conf.replace(
            f'include "{os.path.join(self.opts.persist_dir, "kubenode-*.nft")}"', f'include "{os.path.join(stage, "kubenode-*.nft")}"'
        )
        path = self._write("nftables.conf", staged_conf)
        res = self.runner.run([nft, "-c", "-f", path], ok_rc=range(256), what=f"dry run of {self.opts.persist_conf}")
        if res.rc != 0:
            raise NftError(
                f"{self.opts.persist_conf} with the owned tables would not load at boot; nothing was changed:\n"
                + self._errors(res.err, {path: self.opts.persist_conf, stage: self.opts.persist_dir})
            )

    def apply(self, before: NftState, after: NftState) -> t.Optional[NftState]:
        nft = self._nft()
        if self.tables_differ(before, after):
            tx = os.path.join(self.workdir(), "transaction.nft")
            if self.opts.confirm_timeout:
                self.arm_rollback(before)
            since = time.monotonic()
            generation = self.read_generation()
            res = self.runner.run([nft, "-f", tx], ok_rc=range(256), what="applying the ruleset (nft -f)")
            self.committed_alone = res.rc == 0 and generation is not None and self.read_generation() == generation + 1
            self._time("apply", since)
            if res.rc != 0:
                if self.rollback:
                    self.rollbacks().confirm(self.rollback["key"])
                    self.rollback = None
                raise NftError(f"nft rejected {self.opts.label}; nothing was changed:\n{self._errors(res.err, {tx: 'transaction'})}")
        if self.opts.persist and not self.deferred_files and after.files != before.files:
            self.write_files(after.files, before.files)
        if self.canonical_source == "applied":
            return self._learn(after)
        return None

    def _learn(self, after: NftState) -> NftState:
        """The owned tables as the kernel now lists them become the script's form (the apply's result)."""
        if not self.committed_alone:
            # another transaction came in between: take the form from a scratch namespace and compare
            return NftState(dict(self.canonical(check_mode=False)), after.files)
        state = self.current()
        missing = [tb for tb in self.opts.tables if state.tables.get(tb) is None]
        if missing:
            raise VerifyError(f"nft -f succeeded, but the table(s) {', '.join(missing)} are not in the kernel afterwards")
        self._pending_cache = (self._cache_key, {tb: state.tables[tb] for tb in self.opts.tables})
        self.verified = "re-read"
        return NftState(dict(state.tables), after.files)

    def verify(self, wanted: NftState) -> None:
        if self.canonical_source == "applied" and self.verified == "re-read":
            return  # read back by _learn, right after our one transaction
        if self.committed_alone and self.canonical_source == "cache":
            # our one transaction and nothing else was committed, and a live kernel read this script
            # back as the cached form on an earlier run: the owned tables are that form
            self.verified = "generation"
            if self.opts.persist:
                files = self.read_files()
                if files != wanted.files:
                    raise VerifyError(self.mismatch(NftState(wanted.tables, files), wanted))
            return
        super().verify(wanted)
        self.verified = "re-read"

    # -------------------------------------------------------- rollback

    def rollbacks(self) -> Rollbacks:
        return Rollbacks(self.runner, self.opts.rollback_dir or ROLLBACK_DIR)

    def rollback_key(self) -> str:
        return "nft-" + hashlib.sha256("\n".join(sorted(self.opts.tables)).encode()).hexdigest()[:16]

    def restore_script(self, before: NftState) -> str:
        lines = ["# written by kubenode.dataplane.nft_ruleset: the owned tables as they were before the change"]
        for table in self.opts.tables:
            lines += [f"table {table}", f"delete table {table}"]
            if before.raw.get(table):
                lines.append(before.raw[table].rstrip("\n"))
        return "\n".join(lines) + "\n"

    def arm_rollback(self, before: NftState) -> None:
        nft = self._nft()
        restore = self.restore_script(before)
        # a rollback that cannot load is worse than none: check it before relying on it
        path = self._write("restore.nft", restore)
        res = self.runner.run([nft, "-c", "-f", path], ok_rc=range(256), what="dry run of the rollback")
        if res.rc != 0:
            raise NftError(
                "the current owned tables could not be saved for a rollback, so the change was not made:\n"
                + self._errors(res.err, {path: "rollback"})
            )
        self.rollback = self.rollbacks().arm(
            self.rollback_key(),
            subject=[f"table {tb}" for tb in self.opts.tables],
            restore_text=restore,
            restore_argv=[nft, "-f"],
            timeout=int(self.opts.confirm_timeout or 0),
        )

    # -------------------------------------------------------- files

    def write_files(self, files: t.Dict[str, t.Optional[str]], current: t.Dict[str, t.Optional[str]]) -> None:
        reload_units = False
        for path, content in files.items():
            if path == SERVICE_KEY or current.get(path) == content:
                continue
            if content is None:
                if os.path.exists(path):
                    os.unlink(path)
                self.written.append(path)
                continue
            directory = os.path.dirname(path)
            os.makedirs(directory, mode=0o755, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kubenode-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(content)
            os.chmod(tmp, 0o644)
            self.module.atomic_move(tmp, path)
            self.written.append(path)
            if path == DROPIN:
                reload_units = True
        if self.opts.persist_service:
            systemctl = self.runner.which("systemctl")
            if reload_units and os.path.isdir("/run/systemd/system"):
                self.runner.run([systemctl, "daemon-reload"], what="reloading systemd's units")
            if files.get(SERVICE_KEY) != current.get(SERVICE_KEY):
                self.runner.run([systemctl, "enable", SERVICE], what="enabling nftables.service")
                self.written.append(SERVICE_KEY)

    # -------------------------------------------------------- result

    def result(self, before: NftState, after: NftState, changed: bool) -> t.Dict[str, t.Any]:
        if self._pending_cache and (not changed or self.verified == "re-read"):
            # the live kernel showed this form: equal to it without a change, or read back after the apply
            self.cache.put(*self._pending_cache)
        out: t.Dict[str, t.Any] = {
            "tables": list(self.opts.tables),
            "canonical_source": self.canonical_source,
            "verified": self.verified,
            "timings": dict(self.timings),
            "rollback": None,
            "persisted": sorted(self.written),
            "persist_deferred": self.deferred_files,
        }
        if self.rollback:
            out["rollback"] = {
                "deadline": self.rollback["deadline"],
                "timeout": self.rollback["timeout"],
                "mechanism": self.rollback["mechanism"],
                "unit": self.rollback["unit"],
                "pid": self.rollback["pid"],
            }
        elif self.opts.confirm_timeout and changed and self.module.check_mode:
            out["rollback"] = {"deadline": None, "timeout": self.opts.confirm_timeout, "mechanism": "would be armed",
                               "unit": None, "pid": None}
        return out


def confirm(module: t.Any, runner: Runner, opts: Options) -> t.Dict[str, t.Any]:
    """Cancel the pending rollback of the owned tables, and persist them when asked to."""
    backend = NftBackend(module, runner, opts)
    rollbacks = backend.rollbacks()
    wanted = {f"table {tb}" for tb in opts.tables}
    matches = [r for r in rollbacks.records() if wanted & set(r.get("subject", []))]
    confirmed = []
    for record in matches:
        if module.check_mode:
            if rollbacks.pending(record["key"]):
                confirmed.append(record)
            continue
        done = rollbacks.confirm(record["key"])  # raises RolledBack when too late
        if done:
            confirmed.append(done)
    result: t.Dict[str, t.Any] = {
        "changed": bool(confirmed),
        "tables": list(opts.tables),
        "confirmed": [{"subject": r["subject"], "armed_at": r["armed_at"], "deadline": r["deadline"]} for r in confirmed],
        "persisted": [],
    }
    if opts.persist:
        before = backend.current()
        if any(before.tables[tb] is None for tb in opts.tables):
            absent = [tb for tb in opts.tables if before.tables[tb] is None]
            raise ScriptError(f"cannot persist {', '.join(absent)}: not in the kernel; nothing was changed")
        after = NftState(dict(before.tables), backend.desired_files(before.tables, before.files))
        if after.files != before.files:
            result["changed"] = True
            backend.check_files(after.files, before.files)
            if not module.check_mode:
                backend.write_files(after.files, before.files)
            result["persisted"] = sorted(p for p in after.files if after.files[p] != before.files.get(p))
            if module._diff:
                result["diff"] = {"before": backend.render(NftState({}, before.files)), "after": backend.render(NftState({}, after.files))}
    return result


def options_from_params(params: t.Dict[str, t.Any]) -> Options:
    """Module parameters -> Options: the script to load and the tables it may touch."""
    if params.get("src"):
        raise ScriptError("src is templated by the nft_ruleset action plugin on the controller; call the module by its name "
                          "kubenode.dataplane.nft_ruleset; nothing was changed")
    label = "content"
    script = params.get("content")
    if params.get("ruleset") is not None:
        # the controller validated it against the schema; render it the same way here
        script = _nft_schema.render(params["ruleset"])
        label = "ruleset (rendered)"
    given = [parse_table(tb) for tb in params.get("tables") or []]
    if len(set(given)) != len(given):
        raise ScriptError("tables lists a table twice; nothing was changed")
    state = params.get("state") or "present"
    if state == "absent" and script is not None:
        raise ScriptError("state: absent takes only tables (the tables to delete), not content or ruleset; nothing was changed")
    if params.get("confirm_timeout") is not None and params["confirm_timeout"] < 1:
        raise ScriptError("confirm_timeout must be a number of seconds of at least 1; nothing was changed")
    tables = given
    if script is not None:
        named = tables_named(script, label)
        if not given:
            tables = named
        else:
            stray = [tb for tb in named if tb not in given]
            if stray:
                raise ScriptError(f"{label} names the table(s) {', '.join(stray)} which tables does not list; nothing was changed")
        if not tables:
            raise ScriptError(f"{label} defines no table; nothing was changed")
    elif state == "present" and not params.get("confirm"):
        raise ScriptError("one of content, src or ruleset is required with state: present; nothing was changed")
    return Options(
        tables=tables,
        script=script,
        state=state,
        force=bool(params.get("force")),
        persist=bool(params.get("persist")),
        persist_dir=params.get("persist_dir") or "/etc/nftables.d",
        persist_conf=params.get("persist_conf") or "/etc/nftables.conf",
        persist_service=params.get("persist_service", True) is not False,
        confirm_timeout=params.get("confirm_timeout"),
        canonical_cache=params.get("canonical_cache", True) is not False,
        label=label,
    )
