#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kube_proxy_leftovers
short_description: Remove what a previous kube-proxy mode left on a node, never the rules of the mode that runs
version_added: 0.1.0
description:
  - kube-proxy removes nftables rules when it starts in iptables or ipvs mode, and iptables and IPVS rules when it starts
    in nftables mode, but nothing between iptables and ipvs mode, which share chain names (kubernetes#102314).
  - When O(mode) is C(ipvs) or C(nftables), removes the chains only iptables mode creates from every table of both
    iptables backends, for IPv4 and IPv6 - its per-service chains (C(KUBE-SVC-*), C(KUBE-SVL-*), C(KUBE-SEP-*),
    C(KUBE-FW-*), C(KUBE-EXT-*), C(KUBE-XLB-*)) and the fixed ones ipvs mode does not use (filter C(KUBE-SERVICES),
    whose REJECT rules for Services without endpoints would otherwise keep rejecting, C(KUBE-EXTERNAL-SERVICES),
    C(KUBE-NODEPORTS), C(KUBE-PROXY-CANARY)) - with the rules that jump to them, and iptables mode's own jumps from the
    built-in chains into chains both modes use (told apart by kube-proxy's comments), in one
    C(iptables-restore --noflush) transaction per table, dry-run first with C(--test). A stale chain that a chain
    outside kube-proxy's names still jumps to is kept, with everything it leads to, and reported in RV(kept).
  - When O(mode) is C(iptables) or C(nftables), removes the same way ipvs mode's chains (C(KUBE-IPVS-FILTER),
    C(KUBE-IPVS-OUT-FILTER), C(KUBE-NODE-PORT), C(KUBE-SOURCE-RANGES-FIREWALL), C(KUBE-LOAD-BALANCER)) and its jumps;
    the C(kube-ipvs0) dummy interface (which keeps every Service IP bound on the node); kube-proxy's IPVS virtual
    services, that is those whose address is bound on C(kube-ipvs0) and those on a local address with a port in
    O(node_port_range) (services in O(exclude_cidrs) are never touched); and ipvs mode's ipsets (C(KUBE-CLUSTER-IP),
    C(KUBE-6-*) and the others of kube-proxy's list), except one that a rule staying in place names.
  - What kube-proxy v1.37 leaves at each switch was read from the real kube-proxy on a real kernel; C(KUBE-FIREWALL) is
    never removed (kube-proxy creates it as a duplicate of kubelet's and does not remove it either).
  - Every other chain, rule, table, interface and IPVS service (Calico's C(cali-*), Docker's, the collection's own, the
    live mode's C(KUBE-SERVICES), C(KUBE-NODE-PORT), C(KUBE-POSTROUTING) and so on) stays byte-identical.
author: kubenode.dataplane maintainers (@kubenode)
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.STATEFUL
attributes:
  diff_mode:
    details:
      - The diff lists the chains, jump rules, IPVS services, interface and ipsets that are (or in check mode would be)
        removed.
options:
  mode:
    description: The mode kube-proxy runs now (after the switch); its rules are never touched.
    type: str
    required: true
    choices: [iptables, ipvs, nftables]
  node_port_range:
    description:
      - IPVS services on a local address with a port in this range count as kube-proxy's NodePort services.
      - The empty string limits the clean-up to services on kube-ipvs0 addresses.
    type: str
    default: 30000-32767
  exclude_cidrs:
    description: IPVS services whose address is in one of these CIDRs are never removed (kube-proxy's C(ipvs.excludeCIDRs)).
    type: list
    elements: str
    default: []
requirements:
  - iptables-restore of the backend that holds stale chains; ipvsadm when IPVS services are to be removed; iproute2.
seealso:
  - module: kubenode.dataplane.kube_proxy_node_info
  - name: kubernetes#102314
    description: kube-proxy does not clean up between iptables and ipvs mode.
    link: https://github.com/kubernetes/kubernetes/issues/102314
"""

EXAMPLES = r"""
- name: After switching to ipvs, remove the chains iptables mode left
  kubenode.dataplane.kube_proxy_leftovers:
    mode: ipvs

- name: After leaving ipvs for nftables, remove kube-ipvs0 and kube-proxy's IPVS services
  kubenode.dataplane.kube_proxy_leftovers:
    mode: nftables
    exclude_cidrs: [192.0.2.0/24]
"""

RETURN = r"""
removed:
  description: What was (or in check mode would be) removed, one line each.
  returned: success
  type: list
  elements: str
  sample: ["ipv4 nft nat: rule -A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-EXT-CDGGSHYLG3RE2FKL",
           "ipv4 nft nat: chain KUBE-SVC-NPX46M4PTMTKRN6Y", "ipvs: service TCP 10.96.0.1:443", "link: kube-ipvs0 (10.96.0.1)"]
kept:
  description: Stale chains kept because a chain outside kube-proxy's names jumps to them, and ipsets kept because a
    rule that stays names them.
  returned: success
  type: list
  elements: str
live_mode:
  description: The mode whose rules were protected.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kube_proxy_node as node  # noqa: E402
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import run_module  # noqa: E402
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import Runner  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            mode=dict(type="str", required=True, choices=["iptables", "ipvs", "nftables"]),
            node_port_range=dict(type="str", default=node.DEFAULT_NODE_PORT_RANGE),
            exclude_cidrs=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    run_module(module, lambda m: node.LeftoversBackend(Runner(m), p["mode"], p["node_port_range"], p["exclude_cidrs"]))


if __name__ == "__main__":
    main()
