#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kube_proxy_node_info
short_description: What a node offers each kube-proxy mode, which mode kube-proxy runs there, and Calico's footprint
version_added: 0.1.0
description:
  - Reads, on the node, what decides whether a kube-proxy mode can work there, and checks it for O(mode) (the preflight
    of the C(kubenode.dataplane.kube_proxy) role).
  - C(nftables) needs a kernel >= 5.13 and nft >= 1.0.1. C(ipvs) needs IP_VS in the kernel (loaded, built in, or as a
    module), and the ipset and conntrack programs; it is deprecated since Kubernetes 1.35 (KEP-5495), which the result
    says as a warning. C(iptables) and C(ipvs) need the iptables program; whether the node's rules live in one backend
    only is M(kubenode.dataplane.iptables_backend)'s verdict (the C(kubenode.dataplane.kube_proxy) role runs both), while
    RV(iptables) shows the counts per backend.
  - Asks kube-proxy which mode it runs, at O(proxy_mode_url) (its C(/proxyMode) on C(metricsBindAddress)), from the node
    itself and without any HTTP proxy.
  - Reports Calico's chains per iptables backend next to kube-proxy's, and its interfaces.
author: kubenode.dataplane maintainers (@kubenode)
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.INFO_MODULE
options:
  mode:
    description: Check the node for this kube-proxy mode and return RV(preflight).
    type: str
    choices: [iptables, ipvs, nftables]
  proxy_mode_url:
    description:
      - Where kube-proxy answers C(/proxyMode) on the node, for example V(http://127.0.0.1:10249/proxyMode) (see
        RV(kubenode.dataplane.kube_proxy_config#module:proxy_mode_url)). Not asked when omitted.
    type: str
  kernel_release:
    description:
      - Check this kernel release instead of the one the node runs, for example a kernel you plan to boot.
      - The tests use it to check the stop path on a node whose kernel is too old for nftables mode; the result says
        the value was given (RV(reported_by)).
    type: str
  nft_version:
    description: Check this nft version instead of the one installed, like O(kernel_release).
    type: str
notes:
  - The legacy iptables rules are read only when the kernel holds legacy tables (C(/proc/net/ip_tables_names)), so no
    kernel module is loaded and no program started for a backend that is not in use.
seealso:
  - module: kubenode.dataplane.kube_proxy_config
  - module: kubenode.dataplane.kube_proxy_leftovers
  - module: kubenode.dataplane.iptables_backend
"""

EXAMPLES = r"""
- name: Check every node before switching kube-proxy to nftables
  kubenode.dataplane.kube_proxy_node_info:
    mode: nftables
  register: node

- name: Stop when a node cannot run nftables mode
  ansible.builtin.assert:
    that: node.preflight.ok
    fail_msg: "{{ inventory_hostname }}: {{ node.preflight.problems | join('; ') }}"

- name: Ask kube-proxy which mode it runs
  kubenode.dataplane.kube_proxy_node_info:
    proxy_mode_url: http://127.0.0.1:10249/proxyMode
  register: live
"""

RETURN = r"""
kernel_release:
  description: The kernel release checked (C(uname -r), or O(kernel_release)).
  returned: always
  type: str
  sample: 6.1.0-56-amd64
kernel_version:
  description: Its version numbers.
  returned: always
  type: str
  sample: 6.1.0
nft_version:
  description:
    - The nft version checked; null when nft is not installed, or when O(mode) is V(iptables) or V(ipvs), which do
      not need it (one program less to start on the node).
  returned: always
  type: str
  sample: 1.0.6
nft_version_output:
  description: What C(nft --version) printed (null when it was not run).
  returned: always
  type: str
  sample: nftables v1.0.6 (Lester Gooch #5)
reported_by:
  description: Whether the kernel release and nft version come from the node or were given as options.
  returned: always
  type: dict
  sample: {kernel_release: node, nft_version: node}
tools:
  description: Paths of the programs kube-proxy's modes use (null when missing).
  returned: always
  type: dict
  sample: {ipset: /usr/sbin/ipset, conntrack: /usr/sbin/conntrack, nft: /usr/sbin/nft}
ipvs:
  description: IP_VS in the running kernel.
  returned: always
  type: dict
  sample: {loaded: false, builtin: false, module: true, available: true}
kube_ipvs0:
  description: Whether the kube-ipvs0 interface of ipvs mode exists.
  returned: always
  type: bool
iptables:
  description: Rules and chains per iptables backend, the backend the C(iptables) command selects, the backends in use.
  returned: always
  type: dict
  sample: {legacy: {rules: 0, kube_chains: 0, calico_chains: 0, tables: []}, nft: {rules: 48, kube_chains: 20,
           calico_chains: 0, tables: [filter, mangle, nat]}, selected: nft, in_use: [nft]}
calico:
  description: Calico's footprint, and a mismatch message when its chains and kube-proxy's are in different backends.
  returned: always
  type: dict
  sample: {present: true, iptables_backends: [nft], kube_proxy_backends: [nft], interfaces: [tunl0]}
proxy_mode:
  description: What kube-proxy answered at O(proxy_mode_url) (C(mode) is null and C(error) says why when it did not answer).
  returned: when O(proxy_mode_url) is given
  type: dict
  sample: {url: http://127.0.0.1:10249/proxyMode, mode: ipvs, error: null}
preflight:
  description: Whether O(mode) can run on the node, what stops it, and what the operator should know.
  returned: when O(mode) is given
  type: dict
  sample: {mode: nftables, ok: false, problems: ["the kernel 5.10.0-28-amd64 is older than 5.13, which kube-proxy's nftables mode needs"], warnings: []}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kube_proxy_node as node  # noqa: E402
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            mode=dict(type="str", choices=["iptables", "ipvs", "nftables"]),
            proxy_mode_url=dict(type="str"),
            kernel_release=dict(type="str"),
            nft_version=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = node.gather(node.NodeFacts(Runner(module)), mode=p["mode"], proxy_mode_url=p["proxy_mode_url"],
                             kernel_release=p["kernel_release"], nft_version=p["nft_version"])
    except DataplaneError as exc:
        module.fail_json(msg=str(exc))
    for warning in result.get("preflight", {}).get("warnings", []):
        module.warn(warning)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
