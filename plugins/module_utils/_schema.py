# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small JSON Schema (draft 7) validator for the schemas this collection ships.

Managed nodes often lack python3-jsonschema, and a module must still refuse a bad document
there. This validator implements the keywords our schemas use — type, enum, const, properties,
additionalProperties, required, items, pattern, minimum, maximum and local $ref — with
jsonschema's semantics (booleans are not integers; pattern is searched, not matched), and
reports every error with a JSON path such as ``$.ipvs.scheduler``. The unit tests run it side by
side with the jsonschema package on the same documents and expect the same verdicts and paths.
An unknown keyword in a schema is a programming error, so it raises instead of being ignored.
"""

from __future__ import annotations

import difflib
import re
import typing as t

_HANDLED = {
    "$schema", "$id", "$ref", "title", "description", "definitions", "type", "enum", "const",
    "properties", "additionalProperties", "required", "items", "pattern", "minimum", "maximum",
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


class SchemaError(Exception):
    """The schema itself uses something this validator does not implement."""


def json_path(parts: t.Sequence[t.Union[str, int]]) -> str:
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", part):
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out


def show(value: t.Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class Validator:
    def __init__(self, schema: dict) -> None:
        self.schema = schema

    def _resolve(self, ref: str) -> dict:
        if not ref.startswith("#/"):
            raise SchemaError(f"only local $ref is supported, not {ref}")
        node: t.Any = self.schema
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def errors(self, instance: t.Any) -> t.List[t.Tuple[str, str]]:
        """All errors as (JSON path, message), in document order."""
        found: t.List[t.Tuple[str, str]] = []
        self._check(self.schema, instance, [], found)
        return found

    def _check(self, schema: dict, value: t.Any, path: list, found: list) -> None:
        unknown = set(schema) - _HANDLED
        if unknown:
            raise SchemaError(f"unsupported schema keywords {sorted(unknown)} at {json_path(path)}")
        if "$ref" in schema:
            # draft 7: a $ref replaces its siblings
            self._check(self._resolve(schema["$ref"]), value, path, found)
            return
        where = json_path(path)
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_TYPES[name](value) for name in types):
                wanted = " or ".join(types)
                found.append((where, f"{show(value)} is not of type {wanted}"))
                return
        if "const" in schema and not _same(value, schema["const"]):
            found.append((where, f"{show(value)} is not {show(schema['const'])}"))
        if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
            options = ", ".join(show(o) for o in schema["enum"] if o is not None)
            found.append((where, f"{show(value)} is not one of {options}"))
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
            what = schema.get("title", f"a string matching {schema['pattern']}")
            found.append((where, f"{show(value)} is not a {what}"))
        if _TYPES["number"](value):
            if "minimum" in schema and value < schema["minimum"]:
                found.append((where, f"{show(value)} is less than the minimum of {schema['minimum']}"))
            if "maximum" in schema and value > schema["maximum"]:
                found.append((where, f"{show(value)} is greater than the maximum of {schema['maximum']}"))
        if isinstance(value, dict):
            for name in schema.get("required", []):
                if name not in value:
                    found.append((where, f"{name!r} is a required property"))
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties", True)
            for key, item in value.items():
                if key in props:
                    self._check(props[key], item, path + [key], found)
                elif extra is False:
                    hint = difflib.get_close_matches(str(key), list(props), n=1)
                    msg = f"{key!r} is not a known field"
                    if hint:
                        msg += f" (did you mean {hint[0]!r}?)"
                    found.append((json_path(path + [key]), msg))
                elif isinstance(extra, dict):
                    self._check(extra, item, path + [key], found)
        if isinstance(value, list) and "items" in schema:
            for index, item in enumerate(value):
                self._check(schema["items"], item, path + [index], found)


def _same(a: t.Any, b: t.Any) -> bool:
    # JSON equality: true is not 1
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def validate(schema: dict, instance: t.Any) -> t.List[t.Tuple[str, str]]:
    return Validator(schema).errors(instance)
