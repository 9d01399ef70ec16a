# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The backend of kubenode.dataplane.iptables_backend: which iptables backend the node's rules live in
and which one the ``iptables`` command selects; the selection switched with update-alternatives, and
(migrate) the collection's own chains moved to the new backend with the iptables_ruleset machinery.

Kept apart from _iptables so that iptables_ruleset, which never switches backends, does not ship it.
"""

from __future__ import annotations

import fnmatch
import os
import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import Backend, converge
from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables import (
    BACKENDS, FAMILIES, KUBELET_HINTS, TABLES, IptablesError, Ruleset, Tools, alternatives_dirs, jump_target, parse_save,
    read_all, selected,
)
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import Runner


def inventory(tools: Tools) -> t.Dict[str, t.Dict[str, t.Dict[str, t.Any]]]:
    """{family: {table: {chains: [user chains], rules: n, policies: {chain: policy}}}} of one backend."""
    out: t.Dict[str, t.Dict[str, t.Dict[str, t.Any]]] = {}
    if not tools.available():
        return out
    for family in FAMILIES:
        tables = parse_save(read_all(tools, family), keep=None)
        fam = {}
        for name, saved in tables.items():
            fam[name] = {
                "chains": list(saved.declared),
                "rules": sum(saved.counts.values()),
                "policies": {c: p for c, p in saved.policies.items() if p != "ACCEPT"},
                "_saved": saved,
            }
        out[family] = fam
    return out


def holds_rules(inv: t.Dict[str, t.Dict[str, t.Dict[str, t.Any]]]) -> bool:
    return any(tb["rules"] or tb["chains"] or tb["policies"] for fam in inv.values() for tb in fam.values())


def public_inventory(inv: t.Dict[str, t.Dict[str, t.Dict[str, t.Any]]], nonempty: bool = False) -> dict:
    out: t.Dict[str, t.Dict[str, t.Any]] = {}
    for family, tables in inv.items():
        for table, tb in tables.items():
            if nonempty and not (tb["rules"] or tb["chains"] or tb["policies"]):
                continue
            out.setdefault(family, {})[table] = {k: v for k, v in tb.items() if not k.startswith("_")}
    return out


class Selection(Backend):
    """Which backend the iptables command selects, and (migrate) where the collection's chains live."""

    def __init__(self, module: t.Any, runner: Runner, params: t.Mapping[str, t.Any]) -> None:
        self.module = module
        self.runner = runner
        self.want: t.Optional[str] = params.get("backend")
        self.migrate = bool(params.get("migrate"))
        self.patterns: t.List[str] = list(params.get("owned_chains") or ["KUBENODE-*"])
        self.altdir = params.get("alternatives_altdir")
        self.admindir = params.get("alternatives_admindir")
        self.wait = int(params.get("wait") or 30)
        self.tools = {b: Tools(runner, b, self.wait) for b in BACKENDS}
        self.inv: t.Dict[str, t.Any] = {}
        self.report: t.Dict[str, t.Any] = {}
        self.moved: t.List[str] = []
        self.left: t.Dict[str, t.Any] = {}
        self._before_owned: t.Dict[str, t.List[t.Tuple[str, str, str]]] = {}

    @property
    def other(self) -> str:
        """The backend that is not the one asked for."""
        return "legacy" if self.want == "nft" else "nft"

    def _owned(self, inv: t.Mapping[str, t.Any]) -> t.List[t.Tuple[str, str, str]]:
        out = []
        for family, tables in inv.items():
            for table, tb in tables.items():
                for chain in tb["chains"]:
                    if any(fnmatch.fnmatchcase(chain, p) for p in self.patterns):
                        out.append((family, table, chain))
        return out

    def current(self) -> t.Dict[str, t.Any]:
        sel, alts = selected(self.runner, self.altdir, self.admindir)
        inv = {b: inventory(self.tools[b]) for b in BACKENDS}
        self.inv = inv
        hints = {b: any(any(h in tb["chains"] for h in KUBELET_HINTS) for fam in inv[b].values()
                        for tb in fam.values()) for b in BACKENDS}
        holds = {b: holds_rules(inv[b]) for b in BACKENDS}
        self.report = {
            "selected": sel,
            "alternatives": {k: v for k, v in alts.items() if v},
            "kubelet_hint": [b for b in BACKENDS if hints[b]],
            "rules_in": [b for b in BACKENDS if holds[b]],
            "mixed": all(holds.values()),
            "backends": {b: public_inventory(inv[b], nonempty=True) for b in BACKENDS},
            "installed": [b for b in BACKENDS if self.tools[b].available()],
        }
        if len(self.report["kubelet_hint"]) == 1:
            self.report["detected"] = self.report["kubelet_hint"][0]
        elif len(self.report["rules_in"]) == 1:
            self.report["detected"] = self.report["rules_in"][0]
        else:
            self.report["detected"] = sel
        return {"selected": sel, "owned": {b: self._owned(inv[b]) for b in BACKENDS}}

    def desired(self, before: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
        self._before_owned = before["owned"]
        if not self.want:
            return before
        owned = {b: list(v) for b, v in before["owned"].items()}
        if self.migrate:
            owned[self.want] = sorted(set(owned[self.want]) | set(owned[self.other]))
            owned[self.other] = []
        return {"selected": self.want, "owned": owned}

    def validate(self, after: t.Dict[str, t.Any]) -> None:
        if self.want not in self.report["installed"]:
            raise IptablesError(f"the {self.want} iptables backend is not installed on this host; nothing was changed")
        switching = self.report["selected"] != self.want
        if switching and self.other in self.report["rules_in"] and not self.migrate:
            raise IptablesError(
                f"refusing to switch the iptables command from {self.other} to {self.want}: the {self.other} backend still holds "
                f"rules ({_summary(self.report['backends'][self.other])}), which kube-proxy and the CNI would no longer see "
                "and which would keep filtering traffic; set migrate=true to move the collection's own chains "
                f"({', '.join(self.patterns)}) and switch anyway, or clean the {self.other} backend first; nothing was changed")
        if switching and self.runner.which("update-alternatives", required=False) is None:
            raise IptablesError("this host has no update-alternatives (Debian/Ubuntu) to select the iptables backend "
                                "with; nothing was changed")
        if switching:
            for name in ("iptables", "ip6tables"):
                alt = self.report["alternatives"].get(name)
                if alt is None and name == "ip6tables":
                    continue
                if alt is None or not _alternative_for(alt, self.want):
                    raise IptablesError(f"update-alternatives knows no {name}-{self.want} alternative for {name}; "
                                        "nothing was changed")
        for family, table, _chain in self._moves(after):
            self._migration(family, table).validate_move()

    def _moves(self, after: t.Mapping[str, t.Any]) -> t.List[t.Tuple[str, str, str]]:
        if not self.migrate:
            return []
        return [o for o in after["owned"][self.want] if o in self._before_owned.get(self.other, [])]

    def _migration(self, family: str, table: str) -> "_Move":
        chains = [c for f, tb, c in self._before_owned[self.other] if f == family and tb == table]
        return _Move(self, family, table, chains, self.tools[self.other], self.tools[self.want])

    def apply(self, before: t.Dict[str, t.Any], after: t.Dict[str, t.Any]) -> None:
        done = set()
        for family, table, _chain in self._moves(after):
            if (family, table) in done:
                continue
            done.add((family, table))
            move = self._migration(family, table)
            move.run()
            self.moved += [f"{family} {table} {c}" for c in move.chains]
        if before["selected"] != after["selected"]:
            ua = self.runner.which("update-alternatives")
            dirs = alternatives_dirs(self.altdir, self.admindir)
            for name in ("iptables", "ip6tables"):
                alt = self.report["alternatives"].get(name)
                if alt is None:
                    continue
                self.runner.run([ua] + dirs + ["--set", name, _alternative_for(alt, self.want)],
                                what=f"selecting the {self.want} backend for {name}")
        if self.moved:
            self.left = public_inventory(inventory(self.tools[self.other]), nonempty=True)

    def render(self, state: t.Mapping[str, t.Any]) -> str:
        lines = [f"iptables command: {state['selected']}"]
        for b in BACKENDS:
            for family, table, chain in state["owned"][b]:
                lines.append(f"{b}: {family} {table} {chain}")
        return "\n".join(lines) + "\n"

    def result(self, before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any], changed: bool) -> t.Dict[str, t.Any]:
        if self.report["mixed"] and not self.moved:
            self.module.warn("both iptables backends hold rules on this host (" + "; ".join(
                f"{b}: {_summary(self.report['backends'][b])}" for b in BACKENDS) + "); rules in the backend the "
                "iptables command does not select keep filtering traffic that kube-proxy and the CNI do not see")
        res = dict(self.report)
        if self.want:
            res["selected"] = after["selected"]
        res["migrated"] = self.moved if not self.module.check_mode else [
            f"{f} {tb} {c}" for f, tb, c in self._moves(after)]
        if self.migrate and self.want:
            res["left_behind"] = self.left if self.moved else public_inventory(self.inv.get(self.other, {}), nonempty=True)
        return res


def _summary(inv: t.Mapping[str, t.Any]) -> str:
    parts = []
    for family, tables in inv.items():
        for table, tb in tables.items():
            parts.append(f"{family} {table}: {tb['rules']} rules, {len(tb['chains'])} chains")
    return "; ".join(parts) or "none"


def _alternative_for(alt: t.Mapping[str, t.Any], backend: str) -> t.Optional[str]:
    for path in alt.get("alternatives", []):
        if os.path.basename(path).endswith(f"-{backend}"):
            return path
    return None


class _Move:
    """Move owned chains (and their jumps) of one table from one backend to the other."""

    def __init__(self, sel: Selection, family: str, table: str, chains: t.List[str], src: Tools, dst: Tools) -> None:
        self.sel, self.family, self.table, self.chains, self.src, self.dst = sel, family, table, chains, src, dst

    def _specs(self) -> t.List[t.Dict[str, t.Any]]:
        saved = self.sel.inv[self.src.backend][self.family][self.table]["_saved"]
        specs = []
        for chain in self.chains:
            jump_from, position, jump_spec = [], 1, ""
            for b in TABLES[self.table]:
                for i, rule in enumerate(saved.rules.get(b, [])):
                    if jump_target(rule) == chain:
                        if not jump_from:
                            position = i + 1
                            jump_spec = rule.rsplit(" ", 2)[0] if rule.count(" ") >= 2 else ""
                        jump_from.append(b)
                        break
            specs.append({"chain": chain, "table": self.table, "ip_version": self.family,
                          "rules": list(saved.rules.get(chain, [])), "jump_from": jump_from,
                          "jump_position": position, "jump_spec": jump_spec, "state": "present"})
        return specs

    def _ruleset(self, tools: Tools, specs: t.List[t.Dict[str, t.Any]]) -> Ruleset:
        params = {"chains": specs, "backend": tools.backend, "wait": self.sel.wait, "force": True}
        return Ruleset(self.sel.module, self.sel.runner, params)

    def validate_move(self) -> None:
        rs = self._ruleset(self.dst, self._specs())
        before = rs.current()
        rs._before = before
        after = rs.desired(before)
        if not rs.equal(before, after):
            rs.validate(after)

    def run(self) -> None:
        specs = self._specs()
        converge(self._ruleset(self.dst, specs), False, False)
        for s in specs:
            s["state"] = "absent"
        converge(self._ruleset(self.src, specs), False, False)
