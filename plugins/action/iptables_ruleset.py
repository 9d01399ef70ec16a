# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Controller side of kubenode.dataplane.iptables_ruleset.

1. Checks the arguments against the module's JSON Schema (rules given as data), reporting every
   error at once with its JSON path, before anything reaches the host.
2. Runs the module.
3. With confirm_timeout and auto_confirm: reconnects (a new connection, as a new task would) and
   confirms the change; if the new rules cut the connection, the task fails and the host rolls
   the owned chains back by itself when the timeout expires.
"""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.action import ActionBase

MODULE = "kubenode.dataplane.iptables_ruleset"


def _path(parts: t.Iterable[t.Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def schema_errors(args: t.Mapping[str, t.Any]) -> t.List[str]:
    """Every schema error with its JSON path.

    The schema is for rules given as data: without any, nothing is imported or checked here (the
    module's argument spec and iptables itself check the rest), so that a list of 100,000 rule specs
    costs nothing on the controller. With some, the arguments are checked with the string rules left
    out, and each rule given as data on its own, under its real path.
    """
    chains = args.get("chains")
    data = [(i, j, r) for i, c in enumerate(chains if isinstance(chains, list) else [])
            if isinstance(c, dict) and isinstance(c.get("rules"), list)
            for j, r in enumerate(c["rules"]) if not isinstance(r, str)]
    if not data:
        return []
    try:
        import jsonschema
    except ImportError:
        return ["$.chains: rules given as data need the Python library jsonschema on the controller"]
    # imported here, not at the top: a play that gives no rules as data does not load the rule model at all
    from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables_rules import schema
    full = schema()
    errors = []
    envelope = dict(args)
    envelope["chains"] = [dict(c, rules=[]) if isinstance(c, dict) else c for c in chains]
    for err in jsonschema.Draft202012Validator(full).iter_errors(envelope):
        errors.append((list(err.absolute_path), _message(err)))
    rule = jsonschema.Draft202012Validator({"$defs": full["$defs"], "$ref": "#/$defs/rule"})
    for i, j, r in data:
        if not isinstance(r, dict):
            errors.append((["chains", i, "rules", j],
                           f"{r!r} is neither a rule spec (a string) nor a rule as data (a dictionary)"))
            continue
        for err in rule.iter_errors(r):
            errors.append((["chains", i, "rules", j] + list(err.absolute_path), _message(err)))
    return [f"{_path(p)}: {m}" for p, m in sorted(errors, key=lambda e: [str(x) for x in e[0]])]


def _message(err: t.Any) -> str:
    if err.context:
        # oneOf/anyOf: a branch of the instance's own type says best what is wrong
        same_type = [e for e in err.context if e.validator != "type"]
        if same_type:
            return _message(same_type[0])
    return err.message


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp: t.Any = None, task_vars: t.Optional[t.Dict[str, t.Any]] = None) -> t.Dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        errors = schema_errors(args)
        if errors:
            result.update(failed=True, changed=False, errors=errors,
                          msg="invalid iptables_ruleset arguments: " + "; ".join(errors) + "; nothing was changed")
            return result
        result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
        rollback = result.get("rollback")
        if (result.get("failed") or not result.get("changed") or self._task.check_mode or args.get("confirm")
                or not rollback or not args.get("auto_confirm", True)):
            return result
        token = rollback["token"]
        try:
            # a new connection, as the next task would open: if the new rules cut it, this fails
            self._connection.reset()
            confirmed = self._execute_module(module_name=MODULE, module_args={"confirm": token}, task_vars=task_vars)
        except (AnsibleConnectionFailure, AnsibleError) as exc:
            confirmed = {"failed": True, "msg": str(exc)}
        if confirmed.get("failed") or confirmed.get("unreachable"):
            result.update(
                failed=True,
                msg=(f"the owned chains were applied, but a new connection to the host to confirm them failed "
                     f"({confirmed.get('msg', 'unreachable')}); the host puts the previous chains back by itself "
                     f"{rollback['timeout']} seconds after the change"),
            )
            return result
        result["rollback"] = dict(rollback, confirmed=True)
        return result
