# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: node_spec
short_description: Validate a node's dataplane spec and fill in its defaults
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - Validates the input document of the C(kubenode.dataplane.node) role against its JSON Schema
    (published in the collection's C(docs/schemas/node.schema.json)) on the controller, and reports
    every error at once, each with its JSON path.
  - Returns the effective spec, with defaults filled in and the kernel modules and kernel parameters
    the chosen kube-proxy mode needs derived.
requirements:
  - jsonschema (on the controller)
options:
  _input:
    description: The spec (see the schema for every field).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Validate the spec before any task touches a node
  ansible.builtin.set_fact:
    node_effective: "{{ node_spec | kubenode.dataplane.node_spec }}"
"""

RETURN = r"""
_value:
  description: The effective spec; C(kernel_modules.names) and C(sysctls) are derived, C(firewall) is split
    into C(backend) and C(model).
  type: dict
"""

from ansible.errors import AnsibleFilterError

try:
    import jsonschema  # noqa: F401  pylint: disable=unused-import
    HAS_JSONSCHEMA = True
except ImportError:
    HAS_JSONSCHEMA = False

from ansible_collections.kubenode.dataplane.plugins.module_utils._node_spec import SpecError, effective


def node_spec(spec):
    if not HAS_JSONSCHEMA:
        raise AnsibleFilterError("node_spec: the jsonschema Python library is needed on the controller")
    try:
        return effective(spec)
    except SpecError as exc:
        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {"node_spec": node_spec}
