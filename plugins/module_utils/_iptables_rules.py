# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""iptables rule specs: split, normalise to what iptables-save prints, render structured rules.

Pure functions (the only I/O is reading /etc/services and /etc/protocols, as iptables itself
does). The canonical form of a rule is the text iptables-save prints after ``-A CHAIN ``; the
normaliser maps the spellings people write (``--dport ssh``, ``-s 1.2.3.4``, ``-m tcp``
omitted, ``--syn``, ``--log-level info``, ...) to it, so that comparing the wanted chain with
the saved one is a plain string comparison. tests/unit/fixtures/iptables/spellings.json holds
the kernel's answers for every spelling handled here, captured from both backends.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables_names import (  # noqa: F401 (re-exported)
    CHAIN_RE, FAMILIES, TABLES, SpecError, save_quote, split_words, word,
)


# ---------------------------------------------------------------- lookup tables

_PROTO_PRINT = {6: "tcp", 17: "udp", 136: "udplite", 1: "icmp", 58: "ipv6-icmp", 50: "esp", 51: "ah", 132: "sctp",
                135: "mh"}
_PROTO_ALIASES = {"icmpv6": 58, "ipv6-mh": 135, "mobility-header": 135, "all": 0}
_protocols: t.Optional[t.Tuple[t.Dict[str, int], t.Dict[int, str]]] = None


def _protocol_db() -> t.Tuple[t.Dict[str, int], t.Dict[int, str]]:
    global _protocols
    if _protocols is None:
        by_name: t.Dict[str, int] = {}
        by_num: t.Dict[int, str] = {}
        try:
            with open("/etc/protocols", encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split("#", 1)[0].split()
                    if len(fields) >= 2 and fields[1].isdigit():
                        num = int(fields[1])
                        by_num.setdefault(num, fields[0])
                        for name in [fields[0]] + fields[2:]:
                            by_name.setdefault(name.lower(), num)
        except OSError:
            pass
        _protocols = (by_name, by_num)
    return _protocols


def proto_number(value: str) -> t.Optional[int]:
    v = value.lower()
    if v.isdigit():
        return int(v)
    for num, name in _PROTO_PRINT.items():
        if name == v:
            return num
    if v in _PROTO_ALIASES:
        return _PROTO_ALIASES[v]
    return _protocol_db()[0].get(v)


_proto_cache: t.Dict[str, str] = {}


def proto_name(value: str) -> str:
    """What iptables-save prints after -p: its own names, then /etc/protocols, else the number."""
    if value not in _proto_cache:
        _proto_cache[value] = _proto_name(value)
    return _proto_cache[value]


def _proto_name(value: str) -> str:
    num = proto_number(value)
    if num is None:
        return value.lower()
    if num == 0:
        return "all"
    if num in _PROTO_PRINT:
        return _PROTO_PRINT[num]
    return _protocol_db()[1].get(num, str(num))


def service_port(value: str, proto: str) -> str:
    if value.isdigit():
        return str(int(value))
    try:
        return str(socket.getservbyname(value, proto))
    except OSError:
        return value


def port_range(value: str, proto: str) -> str:
    """``ssh`` -> 22, ``22:22`` -> 22, ``:1024`` -> 0:1024, ``1024:`` -> 1024:65535."""
    if ":" not in value:
        return service_port(value, proto)
    lo, hi = value.split(":", 1)
    lo = service_port(lo, proto) if lo else "0"
    hi = service_port(hi, proto) if hi else "65535"
    if lo == hi:
        return lo
    return f"{lo}:{hi}"


def multiport_list(value: str, proto: str) -> str:
    out = []
    for item in value.split(","):
        if ":" in item:
            lo, hi = item.split(":", 1)
            out.append(f"{service_port(lo, proto)}:{service_port(hi, proto)}")
        else:
            out.append(service_port(item, proto))
    return ",".join(out)


_V4 = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:/(\d{1,2}))?$")
_address_cache: t.Dict[t.Tuple[str, str], t.Optional[str]] = {}


def address(value: str, family: str) -> t.Optional[str]:
    """``1.2.3.4`` -> 1.2.3.4/32, ``10.1.2.3/255.255.0.0`` -> 10.1.0.0/16; None for 0.0.0.0/0."""
    if family == "ipv4":
        m = _V4.match(value)
        if m:
            a, b, c, d, plen = m.groups()
            octets = (int(a), int(b), int(c), int(d))
            bits = 32 if plen is None else int(plen)
            if max(octets) <= 255 and bits <= 32:
                if bits == 0:
                    return None
                num = (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]
                num &= (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
                return f"{num >> 24}.{(num >> 16) & 255}.{(num >> 8) & 255}.{num & 255}/{bits}"
    key = (value, family)
    if key not in _address_cache:
        _address_cache[key] = _slow_address(value, family)
    return _address_cache[key]


def _slow_address(value: str, family: str) -> t.Optional[str]:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return value  # a host name or a non-contiguous mask: left to iptables
    if (net.version == 4) != (family == "ipv4"):
        return value
    if net.prefixlen == 0:
        return None
    return f"{net.network_address}/{net.prefixlen}"


def hexval(value: str) -> str:
    try:
        return hex(int(value, 0))
    except ValueError:
        return value


def mark_value(value: str) -> str:
    """``16`` -> 0x10, ``1/3`` -> 0x1/0x3, a full mask is not printed."""
    val, _sep, mask = value.partition("/")
    out = hexval(val)
    if mask and int(mask, 0) != 0xFFFFFFFF:
        out += "/" + hexval(mask)
    return out


ICMP_TYPES: t.Dict[str, str] = {
    "any": "any", "echo-reply": "0", "pong": "0", "destination-unreachable": "3", "network-unreachable": "3/0",
    "host-unreachable": "3/1", "protocol-unreachable": "3/2", "port-unreachable": "3/3",
    "fragmentation-needed": "3/4", "source-route-failed": "3/5", "network-unknown": "3/6", "host-unknown": "3/7",
    "network-prohibited": "3/9", "host-prohibited": "3/10", "tos-network-unreachable": "3/11",
    "tos-host-unreachable": "3/12", "communication-prohibited": "3/13", "host-precedence-violation": "3/14",
    "precedence-cutoff": "3/15", "source-quench": "4", "redirect": "5", "network-redirect": "5/0",
    "host-redirect": "5/1", "tos-network-redirect": "5/2", "tos-host-redirect": "5/3", "echo-request": "8",
    "ping": "8", "router-advertisement": "9", "router-solicitation": "10", "time-exceeded": "11",
    "ttl-exceeded": "11", "ttl-zero-during-transit": "11/0", "ttl-zero-during-reassembly": "11/1",
    "parameter-problem": "12", "ip-header-bad": "12/0", "required-option-missing": "12/1",
    "timestamp-request": "13", "timestamp-reply": "14", "address-mask-request": "17", "address-mask-reply": "18",
}
ICMP6_TYPES: t.Dict[str, str] = {
    "destination-unreachable": "1", "no-route": "1/0", "communication-prohibited": "1/1", "beyond-scope": "1/2",
    "address-unreachable": "1/3", "port-unreachable": "1/4", "failed-policy": "1/5", "reject-route": "1/6",
    "packet-too-big": "2", "time-exceeded": "3", "ttl-exceeded": "3", "ttl-zero-during-transit": "3/0",
    "ttl-zero-during-reassembly": "3/1", "parameter-problem": "4", "bad-header": "4/0",
    "unknown-header-type": "4/1", "unknown-option": "4/2", "echo-request": "128", "ping": "128",
    "echo-reply": "129", "pong": "129", "mld-listener-query": "130", "mld-listener-report": "131",
    "mld-listener-done": "132", "mld-listener-reduction": "132", "router-solicitation": "133",
    "router-advertisement": "134", "neighbour-solicitation": "135", "neighbor-solicitation": "135",
    "neighbour-advertisement": "136", "neighbor-advertisement": "136", "redirect": "137",
}
REJECT_V4 = {"net-unreach": "icmp-net-unreachable", "host-unreach": "icmp-host-unreachable",
             "proto-unreach": "icmp-proto-unreachable", "port-unreach": "icmp-port-unreachable",
             "net-prohib": "icmp-net-prohibited", "host-prohib": "icmp-host-prohibited",
             "admin-prohib": "icmp-admin-prohibited", "tcp-rst": "tcp-reset"}
REJECT_V6 = {"no-route": "icmp6-no-route", "adm-prohibited": "icmp6-adm-prohibited",
             "addr-unreach": "icmp6-addr-unreachable", "port-unreach": "icmp6-port-unreachable",
             "policy-fail": "icmp6-policy-fail", "reject-route": "icmp6-reject-route", "tcp-rst": "tcp-reset"}
LOG_LEVELS = {"emerg": "0", "alert": "1", "crit": "2", "err": "3", "error": "3", "warning": "4", "warn": "4",
              "notice": "5", "info": "6", "debug": "7"}
CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
CT_STATUS = ("NONE", "EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED")
ADDR_TYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE", "UNREACHABLE",
              "PROHIBIT", "THROW", "NAT", "XRESOLVE")
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG")
_LIMIT_SCALE = 10000
_LIMIT_UNITS = (("day", _LIMIT_SCALE * 86400), ("hour", _LIMIT_SCALE * 3600), ("min", _LIMIT_SCALE * 60),
                ("sec", _LIMIT_SCALE))


def ordered_list(value: str, order: t.Sequence[str]) -> str:
    items = [v.upper() for v in value.split(",")]
    if not all(v in order for v in items):
        return value
    return ",".join(v for v in order if v in items)


def tcp_flags(value: str) -> str:
    v = value.upper()
    if v == "ALL":
        return ",".join(TCP_FLAGS)
    if v == "NONE":
        return "NONE"
    items = v.split(",")
    if not all(f in TCP_FLAGS for f in items):
        return value
    return ",".join(f for f in TCP_FLAGS if f in items)


def limit_rate(value: str) -> str:
    """The rate as libxt_limit prints it back (it stores a period, so 60/min reads as 1/sec)."""
    num, _sep, unit = value.partition("/")
    if not num.isdigit() or int(num) == 0:
        return value
    mult = _LIMIT_SCALE
    if unit:
        for name, m in (("second", _LIMIT_SCALE), ("minute", _LIMIT_SCALE * 60), ("hour", _LIMIT_SCALE * 3600),
                        ("day", _LIMIT_SCALE * 86400)):
            if name.startswith(unit.lower()):
                mult = m
                break
        else:
            return value
    period = mult // int(num)
    if period == 0:
        return value
    i = 1
    while i < len(_LIMIT_UNITS):
        m = _LIMIT_UNITS[i][1]
        if period > m or m // period < m % period:
            break
        i += 1
    name, m = _LIMIT_UNITS[i - 1]
    return f"{m // period}/{name}"


# ---------------------------------------------------------------- the normaliser

# module -> {option alias: (canonical option, number of values)}
_OPTS: t.Dict[str, t.Dict[str, t.Tuple[str, int]]] = {
    "tcp": {"--sport": ("--sport", 1), "--source-port": ("--sport", 1), "--dport": ("--dport", 1),
            "--destination-port": ("--dport", 1), "--tcp-option": ("--tcp-option", 1),
            "--tcp-flags": ("--tcp-flags", 2), "--syn": ("--syn", 0)},
    "udp": {"--sport": ("--sport", 1), "--source-port": ("--sport", 1), "--dport": ("--dport", 1),
            "--destination-port": ("--dport", 1)},
    "sctp": {"--sport": ("--sport", 1), "--source-port": ("--sport", 1), "--dport": ("--dport", 1),
             "--destination-port": ("--dport", 1)},
    "udplite": {"--sport": ("--sport", 1), "--dport": ("--dport", 1)},
    "icmp": {"--icmp-type": ("--icmp-type", 1)},
    "icmp6": {"--icmpv6-type": ("--icmpv6-type", 1)},
    "multiport": {"--sports": ("--sports", 1), "--source-ports": ("--sports", 1), "--dports": ("--dports", 1),
                  "--destination-ports": ("--dports", 1), "--ports": ("--ports", 1)},
    "comment": {"--comment": ("--comment", 1)},
    "conntrack": {o: (o, 1) for o in ("--ctstate", "--ctproto", "--ctorigsrc", "--ctorigdst", "--ctreplsrc",
                                      "--ctrepldst", "--ctorigsrcport", "--ctorigdstport", "--ctreplsrcport",
                                      "--ctrepldstport", "--ctstatus", "--ctexpire", "--ctdir")},
    "state": {"--state": ("--state", 1)},
    "mark": {"--mark": ("--mark", 1)},
    "connmark": {"--mark": ("--mark", 1)},
    "limit": {"--limit": ("--limit", 1), "--limit-burst": ("--limit-burst", 1)},
    "addrtype": {"--src-type": ("--src-type", 1), "--dst-type": ("--dst-type", 1),
                 "--limit-iface-in": ("--limit-iface-in", 0), "--limit-iface-out": ("--limit-iface-out", 0)},
    "pkttype": {"--pkt-type": ("--pkt-type", 1)},
    "mac": {"--mac-source": ("--mac-source", 1)},
}
_TARGET_OPTS: t.Dict[str, t.Dict[str, t.Tuple[str, int]]] = {
    "REJECT": {"--reject-with": ("--reject-with", 1)},
    "LOG": {"--log-prefix": ("--log-prefix", 1), "--log-level": ("--log-level", 1),
            "--log-tcp-sequence": ("--log-tcp-sequence", 0), "--log-tcp-options": ("--log-tcp-options", 0),
            "--log-ip-options": ("--log-ip-options", 0), "--log-uid": ("--log-uid", 0),
            "--log-macdecode": ("--log-macdecode", 0)},
    "NFLOG": {"--nflog-prefix": ("--nflog-prefix", 1), "--nflog-group": ("--nflog-group", 1),
              "--nflog-range": ("--nflog-range", 1), "--nflog-size": ("--nflog-size", 1),
              "--nflog-threshold": ("--nflog-threshold", 1)},
    "MARK": {"--set-mark": ("--set-mark", 1), "--set-xmark": ("--set-xmark", 1), "--and-mark": ("--and-mark", 1),
             "--or-mark": ("--or-mark", 1), "--xor-mark": ("--xor-mark", 1)},
    "CONNMARK": {"--set-mark": ("--set-mark", 1), "--set-xmark": ("--set-xmark", 1),
                 "--and-mark": ("--and-mark", 1), "--or-mark": ("--or-mark", 1), "--xor-mark": ("--xor-mark", 1),
                 "--save-mark": ("--save-mark", 0), "--restore-mark": ("--restore-mark", 0),
                 "--nfmask": ("--nfmask", 1), "--ctmask": ("--ctmask", 1), "--mask": ("--mask", 1)},
    "DNAT": {"--to-destination": ("--to-destination", 1), "--to": ("--to-destination", 1),
             "--random": ("--random", 0), "--persistent": ("--persistent", 0)},
    "SNAT": {"--to-source": ("--to-source", 1), "--to": ("--to-source", 1), "--random": ("--random", 0),
             "--random-fully": ("--random-fully", 0), "--persistent": ("--persistent", 0)},
    "MASQUERADE": {"--to-ports": ("--to-ports", 1), "--random": ("--random", 0),
                   "--random-fully": ("--random-fully", 0)},
    "REDIRECT": {"--to-ports": ("--to-ports", 1), "--random": ("--random", 0)},
    "DSCP": {"--set-dscp": ("--set-dscp", 1)},
}
_PROTO_MATCH = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", "udplite": "udplite", "icmp": "icmp",
                "ipv6-icmp": "icmp6"}
_BASE = {"-p": "-p", "--protocol": "-p", "-s": "-s", "--source": "-s", "--src": "-s", "-d": "-d",
         "--destination": "-d", "--dst": "-d", "-i": "-i", "--in-interface": "-i", "-o": "-o",
         "--out-interface": "-o", "-f": "-f", "--fragment": "-f", "-m": "-m", "--match": "-m", "-j": "-j",
         "--jump": "-j", "-g": "-g", "--goto": "-g"}

Opt = t.Tuple[bool, str, t.List[str]]


class _Module:
    __slots__ = ("name", "opts", "known")

    def __init__(self, name: str, known: t.Optional[t.Dict[str, t.Tuple[str, int]]]) -> None:
        self.name = name
        self.opts: t.List[Opt] = []
        self.known = known


def _take(words: t.List[str], i: int, count: int) -> t.Tuple[t.List[str], int]:
    """Values of an option: ``count`` words, or (unknown option) every word up to the next option."""
    if count >= 0:
        return words[i:i + count], i + count
    vals = []
    while i < len(words) and not words[i].startswith("-") and words[i] != "!":
        vals.append(words[i])
        i += 1
    return vals, i


def _emit_unknown(opts: t.List[Opt]) -> t.List[str]:
    out = []
    for neg, opt, vals in opts:
        if neg:
            out.append("!")
        out.append(opt)
        out += [word(v) for v in vals]
    return out


# Large rulesets repeat a few shapes with different addresses and ports: the canonical form of a
# shape is computed once with placeholders, then filled in (IPv4 addresses and numeric ports only).
_TEMPLATED = {"-s": "a", "--source": "a", "--src": "a", "-d": "a", "--destination": "a", "--dst": "a",
              "--dport": "p", "--destination-port": "p", "--sport": "p", "--source-port": "p"}
_PORT_RE = re.compile(r"^[0-9]{1,5}(:[0-9]{1,5})?$")
_templates: t.Dict[t.Tuple[t.Any, ...], t.Optional[t.List[str]]] = {}
_MARK = "\x01"


def _fill(kind: str, value: str) -> t.Optional[str]:
    if kind == "a":
        if not _V4.match(value):
            return None
        addr = address(value, "ipv4")
        return addr if addr and not addr.endswith("/0") else None
    if not _PORT_RE.match(value):
        return None
    lo, _sep, hi = value.partition(":")
    if not hi:
        return str(int(lo))
    if int(lo) == int(hi):
        return None
    return f"{int(lo)}:{int(hi)}"


def normalise(spec: t.Union[str, t.Sequence[str]], family: str = "ipv4", backend: str = "nft") -> t.List[str]:
    """The rule texts iptables-save prints for ``spec`` (several when -s/-d list addresses)."""
    words = split_words(spec) if isinstance(spec, str) else list(spec)
    if family != "ipv4" or _MARK in "".join(words):
        return _normalise(words, family, backend)
    key: t.List[str] = [family, backend]
    filled: t.List[str] = []
    prev = ""
    for w in words:
        kind = _TEMPLATED.get(prev)
        val = _fill(kind, w) if kind else None
        if val is None:
            key.append(w)
        else:
            key.append(_MARK + kind)
            filled.append(val)
        prev = w
    if not filled:
        return _normalise(words, family, backend)
    tkey = tuple(key)
    tpl = _templates.get(tkey, False)
    if tpl is False:
        marks = []
        probe = []
        for i, k in enumerate(key[2:]):
            if k.startswith(_MARK):
                marks.append(f"{_MARK}{len(marks)}{_MARK}")
                probe.append(marks[-1])
            else:
                probe.append(k)
        out = _normalise(probe, family, backend)
        # usable only if every placeholder comes out once, in order, in one rule
        tpl = None
        if len(out) == 1 and all(out[0].count(m) == 1 for m in marks):
            parts = out[0].split(_MARK)
            if [parts[i] for i in range(1, len(parts), 2)] == [str(i) for i in range(len(marks))]:
                tpl = parts
        if len(_templates) < 4096:
            _templates[tkey] = tpl
    if tpl is None:
        return _normalise(words, family, backend)
    pieces = []
    for i in range(0, len(tpl) - 1, 2):
        pieces.append(tpl[i])
        pieces.append(filled[i // 2])
    pieces.append(tpl[-1])
    return ["".join(pieces)]


def _normalise(words: t.List[str], family: str, backend: str) -> t.List[str]:
    spec = words
    base: t.Dict[str, t.Tuple[bool, t.Optional[str]]] = {}
    matches: t.List[_Module] = []
    loaded: t.List[_Module] = []  # matches and target in the order iptables loads them
    target: t.Optional[_Module] = None
    target_kind = "-j"
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        neg = False
        if w == "!":
            neg = True
            i += 1
            if i >= n:
                raise SpecError(f"'!' at the end of rule '{_text(spec)}'")
            w = words[i]
        opt = _BASE.get(w)
        if opt in ("-p", "-s", "-d", "-i", "-o"):
            if i + 1 >= n:
                raise SpecError(f"'{w}' needs a value in rule '{_text(spec)}'")
            base[opt] = (neg, words[i + 1])
            i += 2
            continue
        if opt == "-f":
            base["-f"] = (neg, None)
            i += 1
            continue
        if w in ("-c", "--set-counters"):
            # the new rule's counters, which iptables-save prints only with -c: not part of the rule's text
            take = 2 if i + 1 < n and "," in words[i + 1] else 3
            if i + take > n:
                raise SpecError(f"'{w}' needs packets and bytes in rule '{_text(spec)}'")
            i += take
            continue
        if opt == "-m":
            if i + 1 >= n:
                raise SpecError(f"'-m' needs a module name in rule '{_text(spec)}'")
            name = words[i + 1]
            existing = next((m for m in matches if m.name == name and name in _PROTO_MATCH.values()), None)
            if existing is None or backend != "nft":
                matches.append(_Module(name, _OPTS.get(name)))
                loaded.append(matches[-1])
            i += 2
            continue
        if opt in ("-j", "-g"):
            if i + 1 >= n:
                raise SpecError(f"'{w}' needs a target in rule '{_text(spec)}'")
            target_kind = opt
            target = _Module(words[i + 1], _TARGET_OPTS.get(words[i + 1]))
            loaded.append(target)
            i += 2
            continue
        if not w.startswith("-"):
            raise SpecError(f"unexpected word '{w}' in rule '{_text(spec)}'")
        owner = _owner(w, loaded, matches, base)
        count = owner.known[w][1] if owner.known and w in owner.known else -1
        i += 1
        vals, i = _take(words, i, count)
        if owner.known and w in owner.known:
            w = owner.known[w][0]
        owner.opts.append((neg, w, vals))

    family = family or "ipv4"
    proto = proto_name(base["-p"][1]) if "-p" in base and base["-p"][1] is not None else None
    srcs = _addresses(base.get("-s"), family, "-s")
    dsts = _addresses(base.get("-d"), family, "-d")
    tail: t.List[str] = []
    for key in ("-i", "-o"):
        if key in base:
            neg, val = base[key]
            tail += (["!"] if neg else []) + [key, word(val or "")]
    if proto is not None and proto != "all":
        tail += (["!"] if base["-p"][0] else []) + ["-p", proto]
    if "-f" in base:
        tail += (["!"] if base["-f"][0] else []) + ["-f"]
    for m in matches:
        tail += ["-m", m.name] + _canon_match(m, proto or "", family)
    if target is not None:
        tail += [target_kind, target.name] + _canon_target(target, family)
    rest = " ".join(tail)
    out = []
    for s in srcs:
        for d in dsts:
            out.append(" ".join(p for p in (s, d, rest) if p))
    return out


def _text(spec: t.Union[str, t.Sequence[str]]) -> str:
    return spec if isinstance(spec, str) else " ".join(spec)


def _addresses(given: t.Optional[t.Tuple[bool, t.Optional[str]]], family: str, flag: str) -> t.List[str]:
    """``-s a,b`` adds one rule per address, as iptables does; ``0.0.0.0/0`` is not printed."""
    if given is None:
        return [""]
    neg, value = given
    out = []
    for item in (value or "").split(","):
        addr = address(item, family)
        out.append("" if addr is None else ("! " if neg else "") + f"{flag} {addr}")
    return out


def _owner(opt: str, loaded: t.List[_Module], matches: t.List[_Module],
           base: t.Dict[str, t.Tuple[bool, t.Optional[str]]]) -> _Module:
    """Which loaded module an option belongs to, as iptables decides it.

    iptables merges the options of each module it loads in front of those loaded before, so
    the most recently loaded module that knows an option gets it; an option no module knows
    loads the match of the -p protocol (the "implicit" -m tcp).
    """
    for m in reversed(loaded):
        if m.known and opt in m.known:
            return m
    proto = base.get("-p")
    if proto and proto[1] is not None:
        implicit = _PROTO_MATCH.get(proto_name(proto[1]))
        if implicit and opt in _OPTS[implicit]:
            m = _Module(implicit, _OPTS[implicit])
            matches.append(m)
            loaded.append(m)
            return m
    for m in reversed(loaded):
        if not m.known:
            return m
    if loaded:
        return loaded[-1]
    raise SpecError(f"option '{opt}' does not belong to any match or target")


def _get(opts: t.List[Opt], name: str) -> t.Optional[Opt]:
    found = None
    for o in opts:
        if o[1] == name:
            found = o
    return found


def _ordered(opts: t.List[Opt], order: t.Sequence[str], conv: t.Callable[[str, str], t.Optional[str]]) -> t.List[str]:
    out: t.List[str] = []
    for name in order:
        o = _get(opts, name)
        if o is None:
            continue
        neg, _n, vals = o
        if not vals:
            out += (["!"] if neg else []) + [name]
            continue
        val = conv(name, vals[0])
        if val is None:
            continue
        out += (["!"] if neg else []) + [name, val] + [word(v) for v in vals[1:]]
    out += _emit_unknown([o for o in opts if o[1] not in order])
    return out


def _canon_match(m: _Module, proto: str, family: str) -> t.List[str]:
    name, opts = m.name, m.opts
    if name in ("tcp", "udp", "sctp", "udplite"):
        syn = _get(opts, "--syn")
        if syn is not None:
            opts = [o for o in opts if o[1] != "--syn"] + [(syn[0], "--tcp-flags", ["FIN,SYN,RST,ACK", "SYN"])]
        order = ("--sport", "--dport", "--tcp-option", "--tcp-flags") if name == "tcp" else ("--sport", "--dport")

        def conv(opt: str, val: str) -> str:
            if opt == "--tcp-flags":
                return tcp_flags(val)
            if opt == "--tcp-option":
                return val
            return port_range(val, name)

        out = _ordered(opts, order, conv)
        flags = _get(opts, "--tcp-flags")
        if flags is not None and len(flags[2]) == 2:
            # the second flag list is printed in the same bit order as the first
            idx = out.index("--tcp-flags")
            out[idx + 2] = tcp_flags(flags[2][1])
        return out
    if name == "icmp":
        return _ordered(opts, ("--icmp-type",), lambda o, v: ICMP_TYPES.get(v.lower(), v))
    if name == "icmp6":
        return _ordered(opts, ("--icmpv6-type",), lambda o, v: ICMP6_TYPES.get(v.lower(), v))
    if name == "multiport":
        return _ordered(opts, ("--sports", "--dports", "--ports"), lambda o, v: multiport_list(v, proto or "tcp"))
    if name == "comment":
        return _ordered(opts, ("--comment",), lambda o, v: save_quote(v))
    if name in ("conntrack", "state"):
        order = ("--state",) if name == "state" else (
            "--ctstate", "--ctproto", "--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst", "--ctorigsrcport",
            "--ctorigdstport", "--ctreplsrcport", "--ctrepldstport", "--ctstatus", "--ctexpire", "--ctdir")

        def ct(opt: str, val: str) -> str:
            if opt in ("--state", "--ctstate"):
                return ordered_list(val, CT_STATES)
            if opt == "--ctstatus":
                return ordered_list(val, CT_STATUS)
            if opt == "--ctproto":
                num = proto_number(val)
                return str(num) if num is not None else val
            return val

        return _ordered(opts, order, ct)
    if name in ("mark", "connmark"):
        return _ordered(opts, ("--mark",), lambda o, v: mark_value(v))
    if name == "limit":
        def lim(opt: str, val: str) -> t.Optional[str]:
            if opt == "--limit-burst":
                return None if val == "5" else val
            return limit_rate(val)
        return _ordered(opts, ("--limit", "--limit-burst"), lim)
    if name == "addrtype":
        return _ordered(opts, ("--src-type", "--dst-type", "--limit-iface-in", "--limit-iface-out"),
                        lambda o, v: ordered_list(v, ADDR_TYPES))
    if name == "pkttype":
        return _ordered(opts, ("--pkt-type",), lambda o, v: v.lower())
    if name == "mac":
        return _ordered(opts, ("--mac-source",), lambda o, v: v.lower())
    return _emit_unknown(opts)


def _xmark(opts: t.List[Opt]) -> t.List[Opt]:
    """MARK/CONNMARK's --set-mark, --and-mark, --or-mark and --xor-mark print as --set-xmark value/mask."""
    out: t.List[Opt] = []
    for neg, opt, vals in opts:
        if not vals:
            out.append((neg, opt, vals))
            continue
        try:
            if opt == "--set-mark":
                val, _s, mask = vals[0].partition("/")
                v, mk = int(val, 0), int(mask, 0) if mask else 0xFFFFFFFF
                out.append((neg, "--set-xmark", [f"{v:#x}/{(mk | v):#x}"]))
            elif opt == "--set-xmark":
                val, _s, mask = vals[0].partition("/")
                v, mk = int(val, 0), int(mask, 0) if mask else 0xFFFFFFFF
                out.append((neg, opt, [f"{v:#x}/{mk:#x}"]))
            elif opt == "--and-mark":
                out.append((neg, "--set-xmark", [f"0x0/{(~int(vals[0], 0)) & 0xFFFFFFFF:#x}"]))
            elif opt == "--or-mark":
                v = int(vals[0], 0)
                out.append((neg, "--set-xmark", [f"{v:#x}/{v:#x}"]))
            elif opt == "--xor-mark":
                out.append((neg, "--set-xmark", [f"{int(vals[0], 0):#x}/0x0"]))
            else:
                out.append((neg, opt, vals))
        except ValueError:
            out.append((neg, opt, vals))
    return out


def _canon_target(tg: _Module, family: str) -> t.List[str]:
    name, opts = tg.name, tg.opts
    if name == "REJECT":
        aliases = REJECT_V4 if family == "ipv4" else REJECT_V6
        default = "icmp-port-unreachable" if family == "ipv4" else "icmp6-port-unreachable"
        if _get(opts, "--reject-with") is None:
            opts = opts + [(False, "--reject-with", [default])]
        return _ordered(opts, ("--reject-with",), lambda o, v: aliases.get(v, v))
    if name == "LOG":
        def log(opt: str, val: str) -> t.Optional[str]:
            if opt == "--log-prefix":
                return save_quote(val)
            level = LOG_LEVELS.get(val.lower(), val)
            return None if level == "4" else level
        return _ordered(opts, ("--log-prefix", "--log-level", "--log-tcp-sequence", "--log-tcp-options",
                               "--log-ip-options", "--log-uid", "--log-macdecode"), log)
    if name == "NFLOG":
        def nflog(opt: str, val: str) -> t.Optional[str]:
            if opt == "--nflog-prefix":
                return save_quote(val)
            if opt == "--nflog-group" and val == "0":
                return None
            return val
        return _ordered(opts, ("--nflog-prefix", "--nflog-group", "--nflog-range", "--nflog-size",
                               "--nflog-threshold"), nflog)
    if name == "MARK":
        return _ordered(_xmark(opts), ("--set-xmark",), lambda o, v: v)
    if name == "CONNMARK":
        opts = _xmark(opts)
        if _get(opts, "--save-mark") or _get(opts, "--restore-mark"):
            mask = _get(opts, "--mask")
            default = mask[2][0] if mask and mask[2] else "0xffffffff"
            rest = [o for o in opts if o[1] != "--mask"]
            for extra in ("--nfmask", "--ctmask"):
                if _get(rest, extra) is None:
                    rest.append((False, extra, [default]))
            return _ordered(rest, ("--set-xmark", "--save-mark", "--restore-mark", "--nfmask", "--ctmask"),
                            lambda o, v: hexval(v))
        return _ordered(opts, ("--set-xmark",), lambda o, v: v)
    if name in ("DNAT", "SNAT"):
        key = "--to-destination" if name == "DNAT" else "--to-source"
        return _ordered(opts, (key, "--random", "--random-fully", "--persistent"), lambda o, v: v)
    if name in ("MASQUERADE", "REDIRECT"):
        return _ordered(opts, ("--to-ports", "--random", "--random-fully"), lambda o, v: v)
    if name == "DSCP":
        return _ordered(opts, ("--set-dscp",), lambda o, v: f"0x{int(v, 0):02x}" if v.isdigit() or v.startswith("0x") else v)
    return _emit_unknown(opts)


# ---------------------------------------------------------------- structured rules

_NEG = r"(! ?)?"
RULE_SCHEMA: t.Dict[str, t.Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "One rule as data; rendered to the rule spec iptables-save prints.",
    "properties": {
        "protocol": {"type": "string", "pattern": f"^{_NEG}[A-Za-z0-9_-]+$"},
        "source": {"type": "string", "pattern": f"^{_NEG}[0-9A-Fa-f:./,]+$"},
        "destination": {"type": "string", "pattern": f"^{_NEG}[0-9A-Fa-f:./,]+$"},
        "in_interface": {"type": "string", "pattern": f"^{_NEG}[A-Za-z0-9_.:@+-]{{1,15}}$"},
        "out_interface": {"type": "string", "pattern": f"^{_NEG}[A-Za-z0-9_.:@+-]{{1,15}}$"},
        "fragment": {"type": "boolean"},
        "sport": {"$ref": "#/$defs/ports"},
        "dport": {"$ref": "#/$defs/ports"},
        "icmp_type": {"type": ["string", "integer"]},
        "ctstate": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": list(CT_STATES)}},
        "limit": {"type": "string", "pattern": "^[0-9]+(/(s|sec|second|m|min|minute|h|hour|d|day))?$"},
        "limit_burst": {"type": "integer", "minimum": 1, "maximum": 10000},
        "matches": {"type": "string", "description": "further matches, as iptables words (-m set --match-set x src)"},
        "comment": {"type": "string", "maxLength": 255},
        "jump": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,28}$"},
        "goto": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,28}$"},
        "reject_with": {"type": "string", "pattern": "^[a-z0-9-]+$"},
        "log_prefix": {"type": "string", "maxLength": 29},
        "log_level": {"type": ["string", "integer"]},
        "to_destination": {"type": "string"},
        "to_source": {"type": "string"},
        "to_ports": {"type": ["string", "integer"]},
        "set_mark": {"type": "string", "pattern": "^(0x[0-9a-fA-F]+|[0-9]+)(/(0x[0-9a-fA-F]+|[0-9]+))?$"},
        "target_options": {"type": "string", "description": "further target options, as iptables words"},
    },
    "not": {"required": ["jump", "goto"]},
}
PORTS_SCHEMA: t.Dict[str, t.Any] = {
    "oneOf": [
        {"type": "integer", "minimum": 0, "maximum": 65535},
        {"type": "string", "pattern": f"^{_NEG}[A-Za-z0-9_-]*(:[A-Za-z0-9_-]*)?$"},
        {"type": "array", "minItems": 1, "maxItems": 15,
         "items": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 65535},
                             {"type": "string", "pattern": "^[A-Za-z0-9_-]+(:[A-Za-z0-9_-]+)?$"}]}},
    ]
}
_KEYS = frozenset(RULE_SCHEMA["properties"])
_TARGET_KEYS = ("reject_with", "log_prefix", "log_level", "to_destination", "to_source", "to_ports", "set_mark",
                "target_options")


def _neg(value: t.Any) -> t.Tuple[bool, str]:
    text = str(value).strip()
    if text.startswith("!"):
        return True, text[1:].strip()
    return False, text


def structured_words(rule: t.Mapping[str, t.Any], family: str, where: str = "rule") -> t.List[str]:
    """The iptables words of a rule given as data (the JSON Schema is checked on the controller;
    this checks again what would otherwise become a wrong rule)."""
    unknown = sorted(set(rule) - _KEYS)
    if unknown:
        raise SpecError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")
    if "jump" in rule and "goto" in rule:
        raise SpecError(f"{where}: a rule has a jump or a goto, not both")
    w: t.List[str] = []
    for key, flag in (("source", "-s"), ("destination", "-d"), ("in_interface", "-i"), ("out_interface", "-o"),
                      ("protocol", "-p")):
        if key in rule and rule[key] not in (None, ""):
            neg, val = _neg(rule[key])
            w += (["!"] if neg else []) + [flag, val]
    if rule.get("fragment"):
        w.append("-f")
    proto = proto_name(_neg(rule["protocol"])[1]) if rule.get("protocol") else ""
    for key in ("sport", "dport"):
        if rule.get(key) in (None, "", []):
            continue
        if proto not in ("tcp", "udp", "sctp", "udplite"):
            raise SpecError(f"{where}.{key}: ports need protocol tcp, udp, sctp or udplite")
        value = rule[key]
        if isinstance(value, list):
            w += ["-m", "multiport", f"--{key}s", ",".join(str(v) for v in value)]
        else:
            neg, val = _neg(value)
            w += ["-m", proto] + (["!"] if neg else []) + [f"--{key}", val]
    if rule.get("icmp_type") not in (None, ""):
        neg, val = _neg(rule["icmp_type"])
        if family == "ipv4":
            if proto != "icmp":
                raise SpecError(f"{where}.icmp_type: needs protocol icmp")
            w += ["-m", "icmp"] + (["!"] if neg else []) + ["--icmp-type", val]
        else:
            if proto != "ipv6-icmp":
                raise SpecError(f"{where}.icmp_type: needs protocol ipv6-icmp")
            w += ["-m", "icmp6"] + (["!"] if neg else []) + ["--icmpv6-type", val]
    if rule.get("ctstate"):
        states = rule["ctstate"] if isinstance(rule["ctstate"], list) else [rule["ctstate"]]
        w += ["-m", "conntrack", "--ctstate", ",".join(str(s).upper() for s in states)]
    if rule.get("limit"):
        w += ["-m", "limit", "--limit", str(rule["limit"])]
        if rule.get("limit_burst"):
            w += ["--limit-burst", str(rule["limit_burst"])]
    if rule.get("matches"):
        w += split_words(str(rule["matches"]))
    if rule.get("comment") is not None:
        w += ["-m", "comment", "--comment", str(rule["comment"])]
    if rule.get("goto"):
        w += ["-g", str(rule["goto"])]
    if rule.get("jump"):
        w += ["-j", str(rule["jump"])]
        for key, opt in (("reject_with", "--reject-with"), ("log_prefix", "--log-prefix"), ("log_level", "--log-level"),
                         ("to_destination", "--to-destination"), ("to_source", "--to-source"),
                         ("to_ports", "--to-ports"), ("set_mark", "--set-mark")):
            if rule.get(key) is not None:
                w += [opt, str(rule[key])]
        if rule.get("target_options"):
            w += split_words(str(rule["target_options"]))
    elif any(rule.get(k) is not None for k in _TARGET_KEYS):
        raise SpecError(f"{where}: target options need a jump")
    return w


def schema() -> t.Dict[str, t.Any]:
    """JSON Schema of the iptables_ruleset module's arguments (docs/schemas/iptables_ruleset.schema.json)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/kubenode/dataplane/docs/schemas/iptables_ruleset.schema.json",
        "title": "kubenode.dataplane.iptables_ruleset arguments",
        "type": "object",
        "properties": {
            "chains": {"type": "array", "items": {"$ref": "#/$defs/chain"}},
            "backend": {"enum": ["auto", "legacy", "nft"]},
            "wait": {"type": "integer", "minimum": 1},
            "force": {"type": "boolean"},
            "canonical_cache": {"type": "boolean"},
            "persist": {"type": "boolean"},
            "persist_dir": {"type": "string"},
            "unit_dir": {"type": "string"},
            "confirm_timeout": {"type": "integer", "minimum": 0},
            "auto_confirm": {"type": "boolean"},
            "confirm": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        },
        "$defs": {
            "chain": {
                "type": "object",
                "additionalProperties": False,
                "required": ["chain"],
                "properties": {
                    "chain": {"type": "string", "pattern": CHAIN_RE.pattern},
                    "table": {"enum": list(TABLES)},
                    "ip_version": {"enum": list(FAMILIES)},
                    "state": {"enum": ["present", "absent"]},
                    "rules": {"oneOf": [
                        {"type": "array", "items": {
                            "if": {"type": "object"}, "then": {"$ref": "#/$defs/rule"},
                            "else": {"type": "string", "minLength": 1}}},
                        {"type": "string", "description": "one rule spec per line; blank lines and # comments skipped"}]},
                    "jump_from": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                    "jump_position": {"type": "integer", "not": {"const": 0}},
                    "jump_spec": {"type": "string"},
                },
            },
            "rule": RULE_SCHEMA,
            "ports": PORTS_SCHEMA,
        },
    }


SCHEMA = schema()
