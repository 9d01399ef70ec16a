# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: dataplane_summary
short_description: One line per node of a fleet's dataplane_info results, nodes with warnings first
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - Summarises the M(kubenode.dataplane.dataplane_info) results of many nodes in a few lines.
  - The first line counts the nodes with warnings, without, and without a report; then come the nodes with warnings
    (with the warnings' ids), the nodes without, and the nodes that gave no report (unreachable or failed).
  - The C(kubenode.dataplane.doctor) playbook prints it once for the fleet.
options:
  _input:
    description: The results, one per host in the order of O(hosts); an entry that is not a result counts as no report.
    type: list
    elements: raw
    required: true
  hosts:
    description: The host names, in the order of the results.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Summarise the fleet once
  ansible.builtin.debug:
    msg: >-
      {{ ansible_play_hosts_all | map('extract', hostvars) | map(attribute='dataplane', default=none) | list
         | kubenode.dataplane.dataplane_summary(ansible_play_hosts_all) }}
  run_once: true
"""

RETURN = r"""
_value:
  description: The summary, one line per node after the first.
  type: list
  elements: str
"""

import typing as t

from ansible.errors import AnsibleFilterError


def dataplane_summary(results: t.Sequence[t.Any], hosts: t.Sequence[str]) -> t.List[str]:
    """One line per node, nodes with warnings first; ``results[i]`` is ``hosts[i]``'s result or None."""
    if len(results) != len(hosts):
        raise AnsibleFilterError("dataplane_summary needs one result (or none) per host")
    warned, clean, missing = [], [], []
    for host, result in zip(hosts, results):
        if not isinstance(result, dict) or "findings" not in result:
            missing.append(f"none {host}: no report (unreachable or failed)")
        elif result["findings"]:
            warned.append(f"WARN {host}: {', '.join(f['id'] for f in result['findings'])}")
        else:
            clean.append(f"ok   {host}")
    head = f"{len(hosts)} nodes: {len(warned)} with warnings, {len(clean)} without, {len(missing)} without a report"
    return [head] + warned + clean + missing


class FilterModule:
    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"dataplane_summary": dataplane_summary}
