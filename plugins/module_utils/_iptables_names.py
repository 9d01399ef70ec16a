# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The names and words of the iptables world that every part of the iptables backend uses: families,
tables and their built-in chains, the chain names the collection may own, the prefixes of chains
that belong to others, and a rule spec's words (split as a shell does, quoted as iptables-restore reads).

Apart from the rule normaliser (_iptables_rules) so that a run whose rules the module has seen before
(their canonical form taken from the cache) does not load the normaliser on the node at all.
"""

from __future__ import annotations

import re
import typing as t

FAMILIES = ("ipv4", "ipv6")
TABLES: t.Dict[str, t.Tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
# chain names the collection may own: iptables allows 28 characters; the set is kept to what
# is also valid in a systemd unit name, which the persisted chains need
CHAIN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,28}$")
# prefixes of chains that belong to kube-proxy, CNIs, Docker and host firewalls
FOREIGN_PREFIXES = ("KUBE-", "cali-", "DOCKER", "CILIUM_", "CILIUM-", "FLANNEL", "WEAVE", "ufw-", "ufw6-", "f2b-",
                    "FORWARD_", "INPUT_", "OUTPUT_", "PREROUTING_", "POSTROUTING_", "IN_", "FWD_", "LIBVIRT_",
                    "ANTREA", "KUBE_", "felix-")


# ---------------------------------------------------------------- words and quoting

class SpecError(ValueError):
    """A rule that cannot be understood; the message names it."""


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def split_words(spec: str) -> t.List[str]:
    """Split a rule spec into words.

    Understands what people write (single and double quotes, as in a shell) and what
    iptables-save prints (double quotes with backslash escapes), so a line copied from
    iptables-save means what it meant there.
    """
    if "'" not in spec and '"' not in spec and "\\" not in spec:
        return spec.split()
    words: t.List[str] = []
    cur: t.List[str] = []
    have = False
    i, n = 0, len(spec)
    while i < n:
        c = spec[i]
        if c in " \t\n":
            if have:
                words.append("".join(cur))
                cur, have = [], False
            i += 1
            continue
        have = True
        if c == "\\" and i + 1 < n:
            cur.append(spec[i + 1])
            i += 2
        elif c == "'":
            end = spec.find("'", i + 1)
            if end < 0:
                raise SpecError(f"unbalanced single quote in rule '{spec}'")
            cur.append(spec[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while i < n and spec[i] != '"':
                if spec[i] == "\\" and i + 1 < n:
                    i += 1
                cur.append(spec[i])
                i += 1
            if i >= n:
                raise SpecError(f"unbalanced double quote in rule '{spec}'")
            i += 1
        else:
            cur.append(c)
            i += 1
    if have:
        words.append("".join(cur))
    return words


def save_quote(value: str) -> str:
    """Quote a string the way iptables-save does (and iptables-restore reads back)."""
    if value and all(c in _SAFE for c in value):
        return value
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f'"{out}"'


def word(value: str) -> str:
    """A non-string value: bare unless restore could not read it back bare."""
    if value and not any(c in value for c in " \t\"'\\"):
        return value
    return save_quote(value)
