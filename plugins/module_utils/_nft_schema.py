# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The structured form of nft_ruleset's input: its JSON Schema and its rendering to an nft script.

The schema is checked on the controller (action plugin, jsonschema), every error reported at once
with its JSON path; docs/schemas/nft_ruleset.schema.json is this same schema for editors.
Rules stay nft's own statement text: the structure is tables, chains (type, hook, priority,
policy), sets, maps (verdict maps are maps whose value is ``verdict``) and named counters.
"""

from __future__ import annotations

import typing as t

NAME = r"^[A-Za-z_][A-Za-z0-9_./-]{0,63}$"
NO_QUOTES = r'^[^"\n\r]*$'
SCALAR = {"type": ["string", "integer"]}

HOOKS = ["prerouting", "input", "forward", "output", "postrouting", "ingress", "egress"]
PRIORITY_NAMES = r"^(raw|mangle|dstnat|filter|security|srcnat|out)( *[-+] *[0-9]+)?$"

_SET_COMMON: t.Dict[str, t.Any] = {
    "name": {"type": "string", "pattern": NAME},
    "type": {"type": "string", "minLength": 1, "pattern": r"^[a-z0-9_ .]+$",
             "description": "Key type, e.g. ipv4_addr or 'ipv4_addr . inet_service'."},
    "typeof": {"type": "string", "minLength": 1, "pattern": NO_QUOTES, "description": "Key given as an expression, e.g. 'ip saddr'."},
    "flags": {"type": "array", "uniqueItems": True, "items": {"enum": ["constant", "interval", "timeout", "dynamic"]}},
    "timeout": {"type": "string", "pattern": r"^([0-9]+(d|h|m|s|ms))+$"},
    "size": {"type": "integer", "minimum": 1},
    "policy": {"enum": ["performance", "memory"]},
    "auto_merge": {"type": "boolean"},
    "comment": {"type": "string", "maxLength": 128, "pattern": NO_QUOTES},
}

SCHEMA: t.Dict[str, t.Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://github.com/kubenode/dataplane/docs/schemas/nft_ruleset.schema.json",
    "title": "kubenode.dataplane.nft_ruleset ruleset",
    "description": "The structured input of kubenode.dataplane.nft_ruleset: the tables it owns, with their contents.",
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["family", "name"],
        "properties": {
            "family": {"enum": ["ip", "ip6", "inet", "arp", "bridge", "netdev"]},
            "name": {"type": "string", "pattern": NAME},
            "comment": {"type": "string", "maxLength": 128, "pattern": NO_QUOTES},
            "sets": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "oneOf": [{"required": ["type"]}, {"required": ["typeof"]}],
                    "properties": dict(_SET_COMMON, elements={"type": "array", "items": SCALAR}),
                },
            },
            "maps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "value"],
                    "oneOf": [{"required": ["type"]}, {"required": ["typeof"]}],
                    "properties": dict(
                        _SET_COMMON,
                        value={"type": "string", "minLength": 1, "pattern": r"^[a-z0-9_ .]+$",
                               "description": "Value type; 'verdict' makes a verdict map."},
                        elements={
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["key", "value"],
                                "properties": {"key": SCALAR, "value": SCALAR},
                            },
                        },
                    ),
                },
            },
            "counters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": NAME},
                        "comment": {"type": "string", "maxLength": 128, "pattern": NO_QUOTES},
                    },
                },
            },
            "chains": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": NAME},
                        "type": {"enum": ["filter", "nat", "route"]},
                        "hook": {"enum": HOOKS},
                        "priority": {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": PRIORITY_NAMES}]},
                        "policy": {"enum": ["accept", "drop"]},
                        "device": {"type": "string", "pattern": r"^[A-Za-z0-9_.:@-]{1,15}$"},
                        "comment": {"type": "string", "maxLength": 128, "pattern": NO_QUOTES},
                        "rules": {
                            "type": "array",
                            "items": {
                                "oneOf": [
                                    {"type": "string", "minLength": 1, "pattern": r"^[^\n\r]*$"},
                                    {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["rule"],
                                        "properties": {
                                            "rule": {"type": "string", "minLength": 1, "pattern": r"^[^\n\r]*$"},
                                            "comment": {"type": "string", "maxLength": 128, "pattern": NO_QUOTES},
                                        },
                                    },
                                ]
                            },
                        },
                    },
                    "dependentRequired": {
                        "type": ["hook", "priority"],
                        "hook": ["type", "priority"],
                        "priority": ["type", "hook"],
                        "policy": ["hook"],
                        "device": ["hook"],
                    },
                },
            },
        },
    },
}


def json_path(parts: t.Iterable[t.Any], root: str = "$") -> str:
    out = root
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def validate(ruleset: t.Any, root: str = "$.ruleset") -> t.List[str]:
    """Every problem of a structured ruleset, each as '<JSON path>: <what is wrong>'.

    Needs jsonschema (a controller-side dependency of the collection).
    """
    import jsonschema  # pylint: disable=import-outside-toplevel

    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems = []
    for err in sorted(validator.iter_errors(ruleset), key=lambda e: [str(p) for p in e.absolute_path]):
        problems.append(f"{json_path(err.absolute_path, root)}: {err.message}")
    if not problems:
        seen: t.Dict[str, int] = {}
        for i, table in enumerate(ruleset):
            ref = f"{table['family']} {table['name']}"
            if ref in seen:
                problems.append(f"{json_path([i, 'name'], root)}: table {ref} is already defined at {json_path([seen[ref]], root)}")
            seen.setdefault(ref, i)
            for kind in ("sets", "maps", "counters", "chains"):
                names: t.Dict[str, int] = {}
                for j, obj in enumerate(table.get(kind) or []):
                    if obj["name"] in names:
                        problems.append(f"{json_path([i, kind, j, 'name'], root)}: '{obj['name']}' is already defined in this table")
                    names.setdefault(obj["name"], j)
            for j, chain in enumerate(table.get("chains") or []):
                if chain.get("hook") in ("ingress", "egress") and table["family"] in ("netdev",) and not chain.get("device"):
                    problems.append(f"{json_path([i, 'chains', j], root)}: a netdev {chain['hook']} chain needs a device")
    return problems


def tables_of(ruleset: t.List[t.Dict[str, t.Any]]) -> t.List[str]:
    return [f"{tb['family']} {tb['name']}" for tb in ruleset]


def _value(v: t.Any) -> str:
    return str(v)


def _set_lines(obj: t.Dict[str, t.Any], indent: str) -> t.List[str]:
    lines = []
    if obj.get("typeof"):
        key = f"typeof {obj['typeof']}"
    else:
        key = f"type {obj['type']}"
    if "value" in obj:
        key += f" : {obj['value']}"
    lines.append(f"{indent}{key}")
    if obj.get("flags"):
        lines.append(f"{indent}flags {', '.join(obj['flags'])}")
    if obj.get("timeout"):
        lines.append(f"{indent}timeout {obj['timeout']}")
    if obj.get("size"):
        lines.append(f"{indent}size {obj['size']}")
    if obj.get("policy"):
        lines.append(f"{indent}policy {obj['policy']}")
    if obj.get("auto_merge"):
        lines.append(f"{indent}auto-merge")
    if obj.get("comment"):
        lines.append(f'{indent}comment "{obj["comment"]}"')
    elements = obj.get("elements") or []
    if elements:
        if "value" in obj:
            items = [f"{_value(e['key'])} : {_value(e['value'])}" for e in elements]
        else:
            items = [_value(e) for e in elements]
        lines.append(f"{indent}elements = {{ {', '.join(items)} }}")
    return lines


def render(ruleset: t.List[t.Dict[str, t.Any]]) -> str:
    """The nft script of a (valid) structured ruleset."""
    out: t.List[str] = []
    for table in ruleset:
        out.append(f"table {table['family']} {table['name']} {{")
        if table.get("comment"):
            out.append(f'\tcomment "{table["comment"]}"')
        for obj in table.get("counters") or []:
            out.append(f"\tcounter {obj['name']} {{")
            if obj.get("comment"):
                out.append(f'\t\tcomment "{obj["comment"]}"')
            out.append("\t}")
        for kind in ("sets", "maps"):
            for obj in table.get(kind) or []:
                out.append(f"\t{kind[:-1]} {obj['name']} {{")
                out += _set_lines(obj, "\t\t")
                out.append("\t}")
        for chain in table.get("chains") or []:
            out.append(f"\tchain {chain['name']} {{")
            if chain.get("hook"):
                device = f' device "{chain["device"]}"' if chain.get("device") else ""
                head = f"\t\ttype {chain['type']} hook {chain['hook']}{device} priority {chain['priority']};"
                if chain.get("policy"):
                    head += f" policy {chain['policy']};"
                out.append(head)
            if chain.get("comment"):
                out.append(f'\t\tcomment "{chain["comment"]}"')
            for rule in chain.get("rules") or []:
                if isinstance(rule, dict):
                    text = rule["rule"]
                    if rule.get("comment"):
                        text += f' comment "{rule["comment"]}"'
                else:
                    text = rule
                out.append(f"\t\t{text}")
            out.append("\t}")
        out.append("}")
    return "\n".join(out) + "\n"
