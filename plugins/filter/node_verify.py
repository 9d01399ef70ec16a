# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: node_verify
short_description: Compare a node's dataplane_info report with its node spec
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - Returns what differs between the report of M(kubenode.dataplane.dataplane_info) and the effective node spec
    (the output of the C(kubenode.dataplane.node_spec) filter), one sentence per difference; empty when the node
    is as specified. The C(kubenode.dataplane.node) role fails the play on a non-empty list.
options:
  _input:
    description: The registered result of M(kubenode.dataplane.dataplane_info).
    type: dict
    required: true
  spec:
    description: The effective spec.
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Fail when the node is not as specified
  ansible.builtin.assert:
    that: (info | kubenode.dataplane.node_verify(effective)) | length == 0
"""

RETURN = r"""
_value:
  description: One sentence per difference, for example C(kernel module ip_vs is available).
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.kubenode.dataplane.plugins.module_utils._node_spec import verify


def node_verify(info, spec):
    if not isinstance(info, dict) or not isinstance(spec, dict):
        raise AnsibleFilterError("node_verify: needs the dataplane_info result and the effective spec")
    return verify(info, spec)


class FilterModule:
    def filters(self):
        return {"node_verify": node_verify}
