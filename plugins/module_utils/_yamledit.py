# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Change single values of a YAML document in place, leaving every other byte as it was.

kube-proxy's configuration lives in files people edit by hand (comments, quoting, order) and in
a ConfigMap that kubeadm wrote in its own style; loading and dumping the YAML again would
rewrite all of it. Instead the text is composed with PyYAML (which records where every node
starts and ends), and only the span of the value that changes is replaced, or one line is
inserted for a key that was missing. Each edit is checked by parsing the result again: the
caller compares the parsed documents with the data it wanted (see _kube_proxy.py).
"""

from __future__ import annotations

import json
import typing as t

try:
    import yaml
    from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

    HAS_YAML = True
except ImportError:  # pragma: no cover - reported by the module with missing_required_lib
    HAS_YAML = False

from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError


class EditError(DataplaneError):
    """The text could not be edited in place."""


def compose_documents(text: str) -> list:
    try:
        return list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise EditError(f"the YAML does not parse: {exc}") from None


def render_scalar(value: t.Any) -> str:
    """A value as kubeadm's serializer would write it: plain when that reads back the same."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if text and "\n" not in text and text == text.strip():
        try:
            if yaml.safe_load(f"k: {text}\n") == {"k": text}:
                return text
        except yaml.YAMLError:
            pass
    # a JSON string is a valid YAML double-quoted scalar
    return json.dumps(text, ensure_ascii=False)


def _keep_quotes(node: "ScalarNode", value: t.Any) -> str:
    """Keep the quotes a person chose (`mode: "iptables"`); an empty string says nothing about style."""
    if isinstance(value, str) and node.value and node.style == '"':
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and node.value and node.style == "'":
        return "'" + value.replace("'", "''") + "'"
    return render_scalar(value)


def render_document(data: dict) -> str:
    """A new document in block style, keys in the given order, ending with a line break."""
    return "".join(_render_entry(k, v, 0, 2) + "\n" for k, v in data.items())


def render_flow(value: t.Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(render_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{render_scalar(k)}: {render_flow(v)}" for k, v in value.items()) + "}"
    return render_scalar(value)


def _render_entry(key: str, value: t.Any, col: int, step: int) -> str:
    """One mapping entry in block style, first line unindented, following lines at ``col``."""
    head = render_scalar(key)
    if isinstance(value, dict) and value:
        lines = [f"{head}:"]
        for k, v in value.items():
            lines.append(" " * (col + step) + _render_entry(k, v, col + step, step))
        return "\n".join(lines)
    if isinstance(value, list) and value and all(not isinstance(v, (dict, list)) for v in value):
        # sequences at the key's own indentation, as kubeadm (go-yaml) writes them
        return "\n".join([f"{head}:"] + [" " * col + "- " + render_scalar(v) for v in value])
    return f"{head}: {render_flow(value)}"


def _implicit_null(node: "Node") -> bool:
    """`key:` with nothing after it."""
    return isinstance(node, ScalarNode) and node.value == "" and node.style is None


def _content_end(text: str, node: "Node") -> int:
    """Where the node's own text ends: no trailing line breaks, comments or indentation."""
    if isinstance(node, ScalarNode) or node.flow_style or not node.value:
        start, end = node.start_mark.index, node.end_mark.index
        return start + len(text[start:end].rstrip())
    last = node.value[-1]
    if isinstance(node, MappingNode):
        key, value = last
        # an empty value has no text of its own; its marks may point at the next line
        return _colon_end(text, key) if _implicit_null(value) else _content_end(text, value)
    return _content_end(text, last)


def _line_end(text: str, index: int) -> int:
    nl = text.find("\n", index)
    return len(text) if nl < 0 else nl


def _colon_end(text: str, key: "Node") -> int:
    index = key.end_mark.index
    while index < len(text) and text[index] in " \t":
        index += 1
    if index >= len(text) or text[index] != ":":
        raise EditError(f"cannot find the ':' after the key {key.value!r}")
    return index + 1


def _indent_step(root: "Node") -> int:
    """The indentation unit of the document (2 unless a nested block mapping says otherwise)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, MappingNode) and not node.flow_style:
            for key, value in node.value:
                if isinstance(value, MappingNode) and not value.flow_style and value.value:
                    step = value.value[0][0].start_mark.column - key.start_mark.column
                    if step > 0:
                        return step
                stack.append(value)
    return 2


def _find(mapping: "MappingNode", key: str) -> t.Optional[tuple]:
    hits = [pair for pair in mapping.value if isinstance(pair[0], ScalarNode) and pair[0].value == key]
    if len(hits) > 1:
        raise EditError(f"the key {key!r} appears {len(hits)} times in the same mapping")
    return hits[0] if hits else None


def _nest(path: t.Sequence[str], value: t.Any) -> t.Any:
    for key in reversed(path):
        value = {key: value}
    return value


def set_value(text: str, doc: int, path: t.Sequence[str], value: t.Any) -> str:
    """Return ``text`` with the value at ``path`` of document ``doc`` set to ``value``."""
    docs = compose_documents(text)
    root = docs[doc]
    if not isinstance(root, MappingNode):
        raise EditError("the document is not a mapping")
    step = _indent_step(root)
    node = root
    parent_key = None
    for depth, key in enumerate(path):
        if not isinstance(node, MappingNode):
            raise EditError("internal: descended into a non-mapping")
        pair = _find(node, key)
        if pair is None:
            return _insert(text, node, parent_key, key, _nest(path[depth + 1:], value), step)
        k, v = pair
        if depth == len(path) - 1:
            return _replace(text, k, v, value, step)
        if not isinstance(v, MappingNode):
            return _replace(text, k, v, _nest(path[depth + 1:], value), step)
        node, parent_key = v, k
    raise EditError("internal: empty path")


def _replace(text: str, key: "Node", node: "Node", value: t.Any, step: int) -> str:
    col = key.start_mark.column
    colon = _colon_end(text, key)
    implicit_null = _implicit_null(node)
    end = colon if implicit_null else _content_end(text, node)
    if isinstance(value, dict) and value:
        new = _render_entry(key.value, value, col, step).split(":", 1)[1]
        return text[:colon] + new + text[end:]
    if isinstance(value, list) and value and not (isinstance(node, SequenceNode) and node.flow_style):
        seq_col = node.start_mark.column if isinstance(node, SequenceNode) else col
        lines = "".join("\n" + " " * seq_col + "- " + render_scalar(v) for v in value)
        if all(not isinstance(v, (dict, list)) for v in value):
            return text[:colon] + lines + text[end:]
    if isinstance(node, ScalarNode) and not implicit_null and not isinstance(value, (dict, list)):
        return text[:node.start_mark.index] + _keep_quotes(node, value) + text[end:]
    return text[:colon] + " " + render_flow(value) + text[end:]


def _insert(text: str, mapping: "MappingNode", parent_key: t.Optional["Node"], key: str, value: t.Any, step: int) -> str:
    if mapping.flow_style or not mapping.value:
        # `{}` or `{a: 1}`: write the whole mapping again in flow style
        start, end = mapping.start_mark.index, _content_end(text, mapping)
        data = yaml.safe_load(text[start:end]) or {}
        data[key] = value
        return text[:start] + render_flow(data) + text[end:]
    keys = [k for k, _v in mapping.value]
    col = keys[0].start_mark.column
    entry = _render_entry(key, value, col, step)
    names = [k.value for k in keys]
    if names == sorted(names):
        for k in keys:
            if k.value > key:
                line_start = text.rfind("\n", 0, k.start_mark.index) + 1
                return text[:line_start] + " " * col + entry + "\n" + text[line_start:]
    last_value = mapping.value[-1][1]
    pos = _line_end(text, _content_end(text, last_value))
    return text[:pos] + "\n" + " " * col + entry + text[pos:]
