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

from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables_rules import schema

MODULE = "kubenode.dataplane.iptables_ruleset"


def _path(parts: t.Iterable[t.Any]) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def schema_errors(args: t.Mapping[str, t.Any]) -> t.List[str]:
    """Every schema error with its JSON path; rules given as strings are checked by iptables itself."""
    try:
        import jsonschema
    except ImportError:
        if any(isinstance(r, dict) for c in args.get("chains") or [] if isinstance(c, dict) for r in c.get("rules") or []):
            return ["$.chains: rules given as data need the Python library jsonschema on the controller"]
        return []
    # only the rules given as data go through jsonschema: a list of 100,000 strings would take seconds
    doc = dict(args)
    chains = doc.get("chains")
    if isinstance(chains, list):
        slim = []
        for chain in chains:
            if isinstance(chain, dict) and isinstance(chain.get("rules"), list):
                chain = dict(chain, rules=[r if not isinstance(r, str) else "-" for r in chain["rules"]])
            slim.append(chain)
        doc["chains"] = slim
    validator = jsonschema.Draft202012Validator(schema())
    errors = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
        errors.append(f"{_path(err.absolute_path)}: {_message(err)}")
    return errors


def _message(err: t.Any) -> str:
    if err.context:
        # oneOf/anyOf: a branch of the instance's own type says best what is wrong
        same_type = [e for e in err.context if e.validator != "type"]
        if same_type:
            return _message(same_type[0])
    # the 'else' branch of rules (a string) is reported for data that is not an object: say it plainly
    if err.validator == "type" and err.validator_value == "string" and list(err.absolute_schema_path)[-3:-1] == ["items", "else"]:
        return f"{err.instance!r} is neither a rule spec (a string) nor a rule as data (a dictionary)"
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
