# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Controller side of kubenode.dataplane.kube_proxy_config: check the requested settings first.

The settings are converted exactly as the module will convert them (the same argument spec),
turned into the partial KubeProxyConfiguration they set, and validated against the schema of
the type on the controller — with the jsonschema package when it is installed, else with the
collection's own validator — before any connection to the host is made. The module validates
the merged document again on the host, where the other fields of the file are known.
"""

from __future__ import annotations

import difflib
import typing as t

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kube_proxy
from ansible_collections.kubenode.dataplane.plugins.module_utils import _schema
from ansible_collections.kubenode.dataplane.plugins.module_utils._kube_proxy_schema import SCHEMA

try:
    import jsonschema

    HAS_JSONSCHEMA = True
except ImportError:
    HAS_JSONSCHEMA = False


def partial_schema() -> dict:
    """The schema of the type without its required fields: settings are a fragment of a document."""
    schema = dict(SCHEMA)
    schema.pop("required", None)
    return schema


def jsonschema_errors(schema: dict, instance: t.Any) -> t.List[t.Tuple[str, str]]:
    """Errors from jsonschema, as (JSON path, message) like the collection's validator gives them.

    Messages of pattern errors use the pattern's title ("a Go duration such as '30s'"), which
    says more to a person than the regular expression; unknown fields get a did-you-mean.
    """
    found: t.List[t.Tuple[str, str]] = []
    validator = jsonschema.Draft7Validator(schema)
    for error in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = list(error.schema.get("properties", {}))
            for key in error.instance:
                if key not in known:
                    hint = difflib.get_close_matches(str(key), known, n=1)
                    found.append((_schema.json_path(path + [key]),
                                  f"{key!r} is not a known field" + (f" (did you mean {hint[0]!r}?)" if hint else "")))
            continue
        message = error.message
        if error.validator == "pattern" and "title" in error.schema:
            message = f"{_schema.show(error.instance)} is not a {error.schema['title']}"
        found.append((_schema.json_path(path), message))
    return found


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp: t.Any = None, task_vars: t.Optional[dict] = None) -> dict:
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        given = {k: v for k, v in args.items() if k in _kube_proxy.SETTINGS_SPEC}
        checked = ArgumentSpecValidator(_kube_proxy.SETTINGS_SPEC).validate(given)
        if checked.error_messages:
            result.update(failed=True, msg=f"{'; '.join(checked.error_messages)}; nothing was sent to the host")
            return result
        extra = _kube_proxy.overlay(checked.validated_parameters)
        schema = partial_schema()
        errors = jsonschema_errors(schema, extra) if HAS_JSONSCHEMA else _schema.validate(schema, extra)
        if not errors:
            errors = _kube_proxy.semantic_errors(extra)
        if errors:
            result.update(
                failed=True,
                msg=_kube_proxy.errors_sentence("the requested settings are not valid for a KubeProxyConfiguration", errors,
                                                "nothing was sent to the host"),
                errors=[{"path": p, "message": m} for p, m in errors],
            )
            return result
        result.update(self._execute_module(module_name="kubenode.dataplane.kube_proxy_config",
                                           module_args=args, task_vars=task_vars))
        return result
