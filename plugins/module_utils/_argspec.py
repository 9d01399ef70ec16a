# -*- coding: utf-8 -*-
# Copyright (c) 2026, kubenode.dataplane contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Suboptions of long lists, checked with Ansible's own type checkers in one pass.

A module whose input is a list of thousands of dicts (IPVS services and their real servers) gives
AnsibleModule the list without its ``options``, and its backend calls :func:`validate_list` on it. The
result is what AnsibleModule would have made of the same input: the same type checkers and conversions,
defaults, choices (an explicit null is checked against them too), required options and unknown options
refused. Ansible's general engine walks each element several times (aliases, no_log values, fallbacks,
deep copies); at 1,000 services with 2 real servers each it took most of a no-op run under emulation.
The unit tests compare both on the same inputs. Errors name the element by its path, for example
``services[3].real_servers[1].weight``, in one :class:`SuboptionError`.

The modules document the suboptions as usual: the full argument spec stays in the module, and
``deferred`` makes the one AnsibleModule gets.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

from ansible.module_utils.common.validation import (
    check_type_bool,
    check_type_dict,
    check_type_int,
    check_type_list,
    check_type_str,
)

CHECKERS: t.Dict[str, t.Callable[..., t.Any]] = {
    "str": check_type_str,
    "int": check_type_int,
    "bool": check_type_bool,
    "list": check_type_list,
    "dict": check_type_dict,
}


class SuboptionError(ValueError):
    """One element of a list of dicts does not fit its suboptions; the message names it by its path."""


def deferred(argument_spec: t.Mapping[str, t.Any], *names: str) -> t.Dict[str, t.Any]:
    """The argument spec for AnsibleModule: the named lists of dicts keep their type, not their options."""
    out = dict(argument_spec)
    for name in names:
        entry = dict(out[name])
        if entry.get("type") != "list" or entry.get("elements") != "dict" or "options" not in entry:
            raise ValueError(f"{name} is not a list of dicts with options")
        del entry["options"]
        out[name] = entry
    return out


# What each type's checker returns unchanged (its first test): those values skip the call. Thousands of
# elements times a dozen options make the calls themselves count on a slow node.
PLAIN: t.Dict[str, t.Tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "list": (list,), "dict": (dict,)}


@dataclass(frozen=True)
class _Option:
    name: str
    wanted: str
    checker: t.Callable[..., t.Any]
    plain: t.Tuple[type, ...]
    default: t.Any
    required: bool
    choices: t.Optional[t.Tuple[t.Any, ...]]
    elements: t.Optional[str]
    element_checker: t.Optional[t.Callable[..., t.Any]]
    element_plain: t.Tuple[type, ...]
    nested: t.Optional[t.Mapping[str, t.Mapping[str, t.Any]]]

    def fresh_default(self) -> t.Any:
        # a copy per element: defaults such as [] are mutable
        value = self.default
        return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


_COMPILED: t.Dict[int, t.Tuple[t.Mapping[str, t.Any], t.List[_Option]]] = {}


def _compile(options: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.List[_Option]:
    found = _COMPILED.get(id(options))
    if found is not None and found[0] is options:
        return found[1]
    compiled = []
    for name, spec in options.items():
        wanted = spec.get("type", "str")
        if wanted not in CHECKERS or spec.get("elements", "str") not in CHECKERS:
            raise ValueError(f"{name}: type {wanted} (elements {spec.get('elements')}) is not handled here")
        choices = spec.get("choices")
        compiled.append(_Option(
            name=name, wanted=wanted, checker=CHECKERS[wanted], plain=PLAIN[wanted], default=spec.get("default"),
            required=bool(spec.get("required")), choices=tuple(choices) if choices is not None else None,
            elements=spec.get("elements"), element_checker=CHECKERS.get(spec.get("elements", "")),
            element_plain=PLAIN.get(spec.get("elements", ""), ()), nested=spec.get("options")))
    _COMPILED[id(options)] = (options, compiled)
    return compiled


def _check_choices(value: t.Any, choices: t.Sequence[t.Any], where: str) -> None:
    if isinstance(value, list):
        wrong = [item for item in value if item not in choices]
        if wrong:
            raise SuboptionError(f"{where}: must be one or more of {', '.join(map(str, choices))}; "
                                 f"got {', '.join(map(str, wrong))}")
    elif value not in choices:
        raise SuboptionError(f"{where}: must be one of {', '.join(map(str, choices))}; got {value}")


def _typed(option: _Option, value: t.Any, where: str) -> t.Any:
    try:
        if not isinstance(value, option.plain):
            value = option.checker(value, param=option.name) if option.wanted == "str" else option.checker(value)
        if option.elements:
            plain, checker = option.element_plain, option.element_checker
            kwargs = {"param": option.name} if option.elements == "str" else {}
            value = [item if isinstance(item, plain) else checker(item, **kwargs) for item in value]
    except (TypeError, ValueError) as exc:
        raise SuboptionError(f"{where}.{option.name}: {exc}") from None
    return value


def validate_dict(params: t.Any, options: t.Mapping[str, t.Mapping[str, t.Any]], where: str) -> t.Dict[str, t.Any]:
    """One element: a new dict with every option of ``options``, as AnsibleModule would return it."""
    if not isinstance(params, dict):
        raise SuboptionError(f"{where}: must be a dict, got {type(params).__name__}")
    unknown = [key for key in params if key not in options]
    if unknown:
        raise SuboptionError(f"{where}: unsupported option {', '.join(sorted(map(str, unknown)))} "
                             f"(supported: {', '.join(sorted(options))})")
    out: t.Dict[str, t.Any] = {}
    for option in _compile(options):
        name = option.name
        if name in params:
            value = params[name]
            given = True
        else:
            value = option.fresh_default()
            given = value is not None
            if not given and option.required:
                raise SuboptionError(f"{where}.{name}: missing, and it is required")
        if not given or (value is None and not option.required and option.default is None):
            # Ansible types nothing here, but still holds an explicit null against the choices
            if given and option.choices is not None:
                _check_choices(value, option.choices, f"{where}.{name}")
            out[name] = value
            continue
        value = _typed(option, value, where)
        if option.choices is not None:
            _check_choices(value, option.choices, f"{where}.{name}")
        if option.nested is not None and value is not None:
            if option.wanted == "list":
                value = validate_list(value, option.nested, f"{where}.{name}")
            else:
                value = validate_dict(value, option.nested, f"{where}.{name}")
        out[name] = value
    return out


def validate_list(items: t.Optional[t.Sequence[t.Any]], options: t.Mapping[str, t.Mapping[str, t.Any]],
                  where: str) -> t.List[t.Dict[str, t.Any]]:
    """Every element of a list of dicts, each as :func:`validate_dict` makes it."""
    return [validate_dict(item, options, f"{where}[{index}]") for index, item in enumerate(items or [])]
