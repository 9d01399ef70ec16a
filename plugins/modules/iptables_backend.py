#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: iptables_backend
short_description: Tell which iptables backend a node's rules live in, and select it safely
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - iptables 1.8 has two backends that do not see each other's rules, C(legacy) (the x_tables kernel
    interface) and C(nft) (nf_tables). A node whose kube-proxy, CNI and firewall write to different backends
    filters traffic twice and in an order nobody chose; kube-proxy and Calico break in ways that are hard
    to see.
  - This module inspects both backends (every table, IPv4 and IPv6; legacy tables that do not exist are not
    read, because reading one creates it) and reports where the rules live, which backend kubelet uses
    (its C(KUBE-IPTABLES-HINT) or C(KUBE-KUBELET-CANARY) chain in the C(mangle) table, read the way
    kubernetes-sigs/iptables-wrappers reads it), and which backend the plain C(iptables) command selects.
  - With O(backend) it selects that backend for the C(iptables) and C(ip6tables) commands with
    C(update-alternatives) (Debian, Ubuntu). It refuses to switch while the other backend still holds rules,
    because those would keep filtering traffic unseen; with O(migrate=true) it first moves the collection's
    own chains (O(owned_chains)) and their jump rules to the selected backend, then switches, and reports
    what it left behind in the other one.
  - Without O(backend) it only reports.
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.STATEFUL
attributes:
  check_mode:
    support: full
    details:
      - In check mode the refusal is reported as in a real run, and the migration's C(iptables-restore --test) runs.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  backend:
    description:
      - The backend the C(iptables) and C(ip6tables) commands should select. Omit it to only report.
    type: str
    choices: [legacy, nft]
  migrate:
    description:
      - Move the chains matching O(owned_chains), with their jump rules from the built-in chains, from the other
        backend to O(backend), then switch even though the other backend still holds rules that are not the
        collection's; RV(left_behind) lists them.
    type: bool
    default: false
  owned_chains:
    description: Shell-style patterns of the chain names that are the collection's own.
    type: list
    elements: str
    default: ["KUBENODE-*"]
  wait:
    description: Seconds to wait for the xtables lock.
    type: int
    default: 30
  alternatives_altdir:
    description:
      - The alternatives directory given to C(update-alternatives --altdir). For tests and image builds that must
        not change the running system's selection; the default is the system's.
    type: path
  alternatives_admindir:
    description: The administrative directory given to C(update-alternatives --admindir) (see O(alternatives_altdir)).
    type: path
notes:
  - Only the C(iptables) and C(ip6tables) alternatives are switched; C(arptables) and C(ebtables) are left as they are.
  - Switching the command does not move anybody's rules; restart kube-proxy and the CNI afterwards so that they write
    their rules to the selected backend (kubelet's hint chain tells them which).
seealso:
  - module: kubenode.dataplane.iptables_ruleset
"""

EXAMPLES = r"""
- name: Where do this node's iptables rules live?
  kubenode.dataplane.iptables_backend:
  register: ipt

- name: Warn about a node with rules in both backends
  ansible.builtin.debug:
    msg: "rules in {{ ipt.rules_in | join(' and ') }}; the iptables command uses {{ ipt.selected }}"
  when: ipt.mixed

- name: Use the nft backend, moving the collection's own chains from legacy if needed
  kubenode.dataplane.iptables_backend:
    backend: nft
    migrate: true
  register: switched

- name: Show what is left in the legacy backend
  ansible.builtin.debug:
    var: switched.left_behind
"""

RETURN = r"""
selected:
  description: The backend the C(iptables) command selects (after the change, if any).
  returned: always
  type: str
  sample: nft
detected:
  description: Where the node's rules live - kubelet's hint chain first, then the only backend holding rules, else RV(selected).
  returned: always
  type: str
  sample: nft
kubelet_hint:
  description: The backends holding kubelet's C(KUBE-IPTABLES-HINT) or C(KUBE-KUBELET-CANARY) chain.
  returned: always
  type: list
  elements: str
  sample: [nft]
rules_in:
  description: The backends holding rules, user-defined chains or non-ACCEPT policies.
  returned: always
  type: list
  elements: str
  sample: [legacy, nft]
mixed:
  description: Whether both backends hold rules.
  returned: always
  type: bool
installed:
  description: The backends whose programs are installed.
  returned: always
  type: list
  elements: str
alternatives:
  description: What C(update-alternatives --query) says about C(iptables) and C(ip6tables).
  returned: when update-alternatives knows them
  type: dict
  sample: {iptables: {status: auto, value: /usr/sbin/iptables-nft, alternatives: [/usr/sbin/iptables-legacy, /usr/sbin/iptables-nft]}}
backends:
  description: Per backend, IP version and table with rules, its user-defined chains, its number of rules and its non-ACCEPT policies.
  returned: always
  type: dict
  sample: {legacy: {ipv4: {filter: {chains: [DOCKER], rules: 4, policies: {FORWARD: DROP}}}}, nft: {}}
migrated:
  description: The chains moved (or, in check mode, to be moved) to O(backend), as C(<ip version> <table> <chain>).
  returned: always
  type: list
  elements: str
  sample: [ipv4 filter KUBENODE-FIREWALL]
left_behind:
  description: What the other backend still holds after the migration (same shape as one backend of RV(backends)).
  returned: when O(migrate=true) and O(backend) are given
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import run_module
from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables import IptablesError, NetnsLock
from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables_backend import Selection
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import Runner


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", choices=["legacy", "nft"]),
            migrate=dict(type="bool", default=False),
            owned_chains=dict(type="list", elements="str", default=["KUBENODE-*"]),
            wait=dict(type="int", default=30),
            alternatives_altdir=dict(type="path"),
            alternatives_admindir=dict(type="path"),
        ),
        supports_check_mode=True,
    )

    try:
        with NetnsLock(module.params["wait"]):
            run_module(module, lambda m: Selection(m, Runner(m), m.params))
    except IptablesError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
