# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: node_firewall
short_description: Render the node-firewall data model for nftables or iptables
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - Expands the node-firewall model shared by the M(kubenode.dataplane.nft_ruleset) based
    C(kubenode.dataplane.nftables) role and the M(kubenode.dataplane.iptables_ruleset) based
    C(kubenode.dataplane.iptables) role into what the backend's module takes.
  - The model is validated first (JSON Schema plus address checks); every error is reported at once
    with its JSON path.
  - The ports are those of kubeadm's "Ports and Protocols" page, plus Calico's (BGP 179/tcp,
    VXLAN 4789/udp, Typha 5473/tcp, WireGuard 51820-51821/udp) when O(_input.cni=calico).
options:
  _input:
    description: The model.
    type: dict
    required: true
    suboptions:
      node_role:
        description: C(control_plane) adds the API server, etcd, controller-manager and scheduler ports.
        type: str
        choices: [worker, control_plane]
        required: true
      cni:
        description: The CNI whose node-to-node ports are opened.
        type: str
        choices: [calico, none]
        default: calico
      cluster_cidrs:
        description: Networks of the cluster's nodes; node-to-node ports accept only these. Empty means from anywhere.
        type: list
        elements: str
        default: []
      ssh_sources:
        description: Networks allowed to reach SSH. Empty means from anywhere.
        type: list
        elements: str
        default: []
      disabled_services:
        description: Catalogue entries not to open (for example V(nodeports_udp)).
        type: list
        elements: str
        default: []
      trusted_interfaces:
        description: Interfaces from which everything is accepted (C(*) is a wildcard).
        type: list
        elements: str
        default: []
      allow_icmp:
        description: Accept ICMP and ICMPv6.
        type: bool
        default: true
      default_action:
        description: What happens to traffic to the node that no rule accepts.
        type: str
        choices: [drop, reject, accept]
        default: drop
      log_dropped:
        description: Log (rate-limited) what is dropped or rejected.
        type: bool
        default: false
      extra_rules:
        description: Further ports to open, each with a O(_input.extra_rules[].name), C(protocol), C(ports) and optional C(sources).
        type: list
        elements: dict
        default: []
  backend:
    description: V(nft) returns the text of the table C(inet kubenode_firewall); V(iptables) returns the owned chains.
    type: str
    choices: [nft, iptables]
    required: true
"""

EXAMPLES = r"""
- name: Render a worker's firewall for nftables
  ansible.builtin.debug:
    msg: "{{ {'node_role': 'worker', 'cluster_cidrs': ['10.0.0.0/16']} | kubenode.dataplane.node_firewall('nft') }}"
"""

RETURN = r"""
_value:
  description:
    - For V(nft), the nft text of the whole table C(inet kubenode_firewall).
    - For V(iptables), a list with one owned chain per IP version (C(ip_version), C(table), C(chain), C(rules),
      C(jump_from), C(jump_position)).
  type: raw
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.kubenode.dataplane.plugins.module_utils._fwmodel import ModelError, render_iptables, render_nft


def node_firewall(model, backend):
    if not isinstance(model, dict):
        raise AnsibleFilterError("node_firewall: the model must be a dictionary")
    try:
        if backend == "nft":
            return render_nft(model)
        if backend == "iptables":
            return render_iptables(model)
    except ModelError as exc:
        raise AnsibleFilterError(str(exc)) from None
    raise AnsibleFilterError(f"node_firewall: backend must be 'nft' or 'iptables', not {backend!r}")


class FilterModule:
    def filters(self):
        return {"node_firewall": node_firewall}
