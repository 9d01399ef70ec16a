# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Controller side of nft_ruleset: templates ``src`` and checks ``ruleset`` against its JSON Schema.

Both happen before anything reaches the managed node, so a bad document fails with every
problem listed (each with its JSON path) and nothing is changed anywhere.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

try:
    from ansible.template import trust_as_template
except ImportError:  # ansible-core < 2.19 tags no data: text read from a file is a template as it is
    trust_as_template = None

from ansible_collections.kubenode.dataplane.plugins.module_utils import _nft_schema

MODULE = "kubenode.dataplane.nft_ruleset"


class ActionModule(ActionBase):

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)

        given = [k for k in ("content", "src", "ruleset") if args.get(k) is not None]
        if len(given) > 1:
            result.update(failed=True, msg=f"{', '.join(given)} are mutually exclusive: give one; nothing was changed")
            return result

        if args.get("src") is not None:
            try:
                args["content"] = self._template(args.pop("src"), task_vars)
            except AnsibleError as exc:
                result.update(failed=True, msg=f"src: {to_text(exc)}; nothing was changed")
                return result

        if args.get("ruleset") is not None:
            try:
                problems = _nft_schema.validate(args["ruleset"])
            except ImportError:
                msg = "the ruleset option needs the jsonschema Python library on the controller (pip install jsonschema); nothing was changed"
                result.update(failed=True, msg=msg)
                return result
            if problems:
                result.update(
                    failed=True,
                    msg=f"ruleset does not match its schema ({len(problems)} problem{'s' if len(problems) > 1 else ''}): "
                    + "; ".join(problems) + "; nothing was changed",
                    problems=problems,
                )
                return result

        result.update(self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars))
        return result

    def _template(self, src: str, task_vars: dict) -> str:
        source = self._find_needle("templates", src)
        if trust_as_template is None:
            data = to_text(self._loader._get_file_contents(source)[0], errors="surrogate_or_strict")
        else:
            data = trust_as_template(self._loader.get_text_file_contents(source))
        searchpath = list(task_vars.get("ansible_search_path", [])) + [self._loader._basedir, os.path.dirname(source)]
        paths = []
        for p in searchpath:
            paths += [os.path.join(p, "templates"), p]
        templar = self._templar.copy_with_new_env(searchpath=paths, available_variables=task_vars)
        rendered = templar.template(data, escape_backslashes=False)
        return to_text(rendered or "")
