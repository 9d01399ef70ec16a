#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: dataplane_info
short_description: Tell what is really active in a Kubernetes node's dataplane
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - Reads a node's kernel, netfilter, IPVS and interfaces and reports which dataplane is really active,
    with warnings that each carry a one-line remedy.
  - Kernel version and configuration (C(CONFIG_MODULES), IP_VS built in, module or missing, nf_tables) from
    C(/proc/config.gz) or C(/boot/config-RELEASE); the state of the modules that matter (loaded, built in,
    available, missing) from C(/proc/modules), C(/sys/module) and C(modules.builtin).
  - The sysctls that matter, read from C(/proc/sys). A sysctl that does not exist (for example
    C(net.bridge.bridge-nf-call-iptables) before C(br_netfilter) is loaded) is reported as V(null), never as C(0).
  - Rule and chain counts per iptables backend (C(iptables-legacy-save) and C(iptables-nft-save), both when present),
    the backend the C(iptables) command uses, and where kubelet's C(KUBE-IPTABLES-HINT) / C(KUBE-KUBELET-CANARY)
    chains are.
  - nftables tables with their likely owner (kube-proxy, calico, firewalld, docker, iptables-nft, this collection).
  - IPVS virtual services (from C(/proc/net/ip_vs)) and the C(kube-ipvs0) interface.
  - kube-proxy's mode from its C(/proxyMode) endpoint when it answers; otherwise inferred from what kube-proxy
    leaves in the kernel (C(kube-ipvs0) with IPVS services, an C(ip)/C(ip6 kube-proxy) nftables table, a
    C(KUBE-SERVICES) chain) and said to be inferred.
  - The CNI seen (Calico from its C(cali*) interfaces, C(tunl0) with an address, C(vxlan.calico), its C(cali-) chains
    or C(calico) nftables tables, its process and CNI configuration).
  - Works on a host without Kubernetes and without any of the tools; what cannot be read is listed in RV(unavailable)
    instead of failing.
  - Reading is all it does. Listing nftables tables can make the kernel load C(nf_tables) on demand, as any
    C(nft list) does; the module list is read before any tool runs, so the report shows the state found.
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.INFO_MODULE
attributes:
  check_mode:
    support: full
  diff_mode:
    support: N/A
  idempotent:
    support: full
options:
  metrics_address:
    description:
      - Address (C(host:port)) of kube-proxy's metrics server, its C(metricsBindAddress); C(/proxyMode) is asked there.
      - A wildcard host (C(0.0.0.0), C([::])) is asked on loopback.
      - An empty string skips the question, and the mode is then inferred.
    type: str
    default: 127.0.0.1:10249
  metrics_timeout:
    description: Seconds to wait for C(/proxyMode) to answer.
    type: float
    default: 2.0
  kube_proxy_config:
    description:
      - Path on the node of kube-proxy's configuration file (a C(KubeProxyConfiguration)), for the configured mode
        and C(ipvs.strictARP).
      - When unset, the C(--config) file of a running kube-proxy process is read (inside the process's own root
        when kube-proxy runs in a container).
      - Without either, strictARP in ipvs mode is judged from the two sysctls kube-proxy sets when it is on
        (C(net.ipv4.conf.all.arp_ignore=1), C(net.ipv4.conf.all.arp_announce=2)).
    type: path
  extra_sysctls:
    description:
      - More sysctls to read and report in RV(sysctls), by name (for example V(net.ipv4.conf.all.rp_filter)), besides
        the ones always reported.
    type: list
    elements: str
    default: []
  metallb:
    description:
      - Whether MetalLB is present, for the strictARP warning.
      - V(auto) looks for MetalLB's speaker process on the node (a C(speaker) process with C(METALLB_) variables in its
        environment). A node excluded from the speaker DaemonSet cannot see MetalLB; say V(present) there.
    type: str
    choices: [auto, present, absent]
    default: auto
notes:
  - Run it as root (C(become)); without root the process environment and some tables cannot be read and are listed
    in RV(unavailable).
  - The C(kubenode.dataplane.doctor) playbook prints this report per node, warnings first.
seealso:
  - module: kubenode.dataplane.ipvs_info
  - module: kubenode.dataplane.kube_proxy_config
"""

EXAMPLES = r"""
- name: Read the dataplane of the node
  kubenode.dataplane.dataplane_info:
  register: dataplane

- name: Stop when the node has dataplane warnings
  ansible.builtin.assert:
    that: dataplane.findings | length == 0
    fail_msg: "{{ dataplane.findings | map(attribute='message') | list }}"

- name: Ask kube-proxy on the port it was configured with, name its config file, read one more sysctl
  kubenode.dataplane.dataplane_info:
    metrics_address: 127.0.0.1:10249
    kube_proxy_config: /var/lib/kube-proxy/config.conf
    metallb: present
    extra_sysctls:
      - net.ipv4.conf.all.rp_filter
  register: dataplane

- name: Show kube-proxy's mode and how it was found
  ansible.builtin.debug:
    msg: "{{ dataplane.kube_proxy.mode }} ({{ dataplane.kube_proxy.mode_source }})"
"""

RETURN = r"""
findings:
  description: The warnings, most important first; empty on a healthy node and on a host without Kubernetes.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: >-
        Stable name: V(mixed_iptables_backends), V(iptables_command_mismatch), V(ipvs_kernel_missing),
        V(ipvs_modules_missing), V(strict_arp_off_with_metallb), V(ipvs_deprecated), V(stale_kube_ipvs0),
        V(ip_forward_off).
      type: str
    message:
      description: What is wrong, in one sentence.
      type: str
    remedy:
      description: What to do about it, in one line.
      type: str
  sample:
    - id: mixed_iptables_backends
      message: both iptables backends hold rules (legacy 9 rules, nft 56 rules); rules in one are invisible to tools using the other
      remedy: keep nft (kubenode.dataplane.iptables_backend), move the other backend's rules to it and flush them there
kernel:
  description: The running kernel.
  returned: always
  type: dict
  contains:
    release:
      description: C(uname -r).
      type: str
    config_source:
      description: The file the kernel configuration was read from, V(null) when none was readable.
      type: str
    config:
      description: >-
        The value (V(y), V(m), V(n)) of each kernel configuration symbol that matters, C(CONFIG_MODULES) first;
        V(n) also for a symbol the configuration does not mention; V(null) without a configuration.
      type: dict
    features:
      description: >-
        V(builtin), V(module), V(missing) or V(unknown) for C(ip_vs), C(nf_tables), C(nft_compat),
        C(ip_tables), C(iptables_legacy), C(bridge_netfilter), C(ip_set), C(nf_conntrack), C(dummy), C(vxlan), C(ipip).
      type: dict
    nftables_proxy_capable:
      description: Whether the kernel is new enough (5.13) for kube-proxy's nftables mode.
      type: bool
  sample:
    release: 6.1.0-28-amd64
    config_source: /boot/config-6.1.0-28-amd64
    config: {CONFIG_MODULES: y, CONFIG_IP_VS: m, CONFIG_NF_TABLES: m}
    features: {ip_vs: module, nf_tables: module}
    nftables_proxy_capable: true
modules:
  description: Kernel modules that matter to the dataplane.
  returned: always
  type: dict
  contains:
    loadable:
      description: Whether the kernel can load modules at all.
      type: bool
    loaded_total:
      description: Number of modules loaded.
      type: int
    state:
      description: Module name to V(loaded), V(builtin), V(available) (can be loaded), V(missing) or V(unknown).
      type: dict
    at_boot:
      description:
        - The modules above that are loaded at every boot, because a file of C(/etc/modules-load.d),
          C(/run/modules-load.d), C(/usr/local/lib/modules-load.d), C(/usr/lib/modules-load.d) or C(/etc/modules)
          names them.
      type: list
      elements: str
  sample:
    loadable: true
    loaded_total: 42
    state: {ip_vs: loaded, ip_vs_rr: loaded, br_netfilter: available, overlay: available}
    at_boot: [ip_vs, ip_vs_rr]
sysctls:
  description:
    - Sysctl name to its value, V(null) when the sysctl does not exist on this kernel or in this network namespace.
    - Always C(net.ipv4.ip_forward), C(net.ipv6.conf.all.forwarding), C(net.bridge.bridge-nf-call-iptables),
      C(net.bridge.bridge-nf-call-ip6tables), C(net.ipv4.conf.all.arp_ignore), C(net.ipv4.conf.all.arp_announce),
      C(net.netfilter.nf_conntrack_max), every C(net.ipv4.vs.*) (or, when IPVS is not loaded, the four kube-proxy sets),
      and the O(extra_sysctls).
  returned: always
  type: dict
  sample: {net.ipv4.ip_forward: "1", net.bridge.bridge-nf-call-iptables: null, net.ipv4.vs.conntrack: "1"}
iptables:
  description: Both iptables backends.
  returned: always
  type: dict
  contains:
    version:
      description: Version of the C(iptables) command.
      type: str
    default_backend:
      description: Backend the C(iptables) command uses, V(nft) or V(legacy).
      type: str
    backend:
      description: The backend that holds rules, V(mixed) when both do, V(null) when neither does.
      type: str
    in_use:
      description: Backends that hold rules, user chains or a non-ACCEPT policy.
      type: list
      elements: str
    mixed:
      description: Whether both backends are in use.
      type: bool
    kubernetes_backend:
      description: Backend holding kubelet's C(KUBE-IPTABLES-HINT) or C(KUBE-KUBELET-CANARY) chain (V(both) if both do).
      type: str
    backends:
      description: >-
        Per backend (C(legacy), C(nft)): C(available), C(rules), C(chains) (user-defined), C(kube_chains),
        C(calico_chains), C(kubernetes_hint), C(kube_services), C(policies) (non-ACCEPT built-in policies) and
        C(families) (the same counts for C(ipv4) and C(ipv6)).
      type: dict
nftables:
  description: nftables tables.
  returned: always
  type: dict
  contains:
    available:
      description: Whether the tables could be listed.
      type: bool
    tables:
      description: Each table with its C(family), C(name) and likely C(owner).
      type: list
      elements: dict
    owners:
      description: Owner to number of tables.
      type: dict
  sample:
    available: true
    tables: [{family: ip, name: kube-proxy, owner: kube-proxy}, {family: inet, name: kubenode_firewall, owner: kubenode.dataplane}]
    owners: {kube-proxy: 1, kubenode.dataplane: 1}
ipvs:
  description: IPVS in this network namespace.
  returned: always
  type: dict
  contains:
    available:
      description: Whether C(/proc/net/ip_vs) exists, that is C(ip_vs) is loaded or built in.
      type: bool
    services:
      description: Number of virtual services.
      type: int
    services_on_kube_ipvs0:
      description: Virtual services whose address is bound to C(kube-ipvs0) (ClusterIPs; NodePorts are on node addresses).
      type: int
    protocols:
      description: Protocol to number of virtual services.
      type: dict
    kube_ipvs0:
      description: C(present), C(kind) and number of C(addresses) of the C(kube-ipvs0) interface.
      type: dict
kube_proxy:
  description: kube-proxy's mode and configuration.
  returned: always
  type: dict
  contains:
    mode:
      description: V(iptables), V(ipvs), V(nftables), or V(null) when neither kube-proxy nor its rules are found.
      type: str
    mode_source:
      description: V(endpoint) (kube-proxy said so) or V(inferred) (from the rules it leaves).
      type: str
    running:
      description: Whether a kube-proxy process runs on the node.
      type: bool
    endpoint:
      description: C(url) asked, whether it was C(reachable), and the C(error) when it was not.
      type: dict
    configured_mode:
      description: Mode in kube-proxy's configuration or C(--proxy-mode) flag, when either was found.
      type: str
    config_path:
      description: The configuration file read.
      type: str
    strict_arp:
      description: C(ipvs.strictARP), V(null) when unknown.
      type: bool
    strict_arp_source:
      description: V(config) or V(sysctl).
      type: str
    evidence:
      description: What kube-proxy left in the kernel, one line each.
      type: list
      elements: str
  sample:
    mode: ipvs
    mode_source: inferred
    running: false
    endpoint: {url: "http://127.0.0.1:10249/proxyMode", reachable: false, error: "connection refused"}
    evidence: ["kube-ipvs0 with 1 addresses and 1 IPVS virtual services"]
kubernetes:
  description: C(kubelet) path and Kubernetes C(version) from C(kubelet --version), V(null) when not installed.
  returned: always
  type: dict
cni:
  description: The CNI seen.
  returned: always
  type: dict
  contains:
    name:
      description: V(calico), V(cilium), V(flannel) or V(null).
      type: str
    evidence:
      description: What shows Calico, one line each.
      type: list
      elements: str
    calico_dataplane:
      description: Calico's dataplane judged from what it left, V(iptables), V(nftables), V(bpf) or V(null).
      type: str
    other:
      description: Other CNIs whose interfaces are present.
      type: list
      elements: str
metallb:
  description: C(present) and the C(evidence) for it.
  returned: always
  type: dict
interfaces:
  description: Number of network interfaces in the namespace.
  returned: always
  type: int
unavailable:
  description: Parts that could not be read, each with C(part) and C(reason); they are reported, not failed on.
  returned: always
  type: list
  elements: dict
  sample: [{part: nftables, reason: "the program 'nft' is not installed"}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.kubenode.dataplane.plugins.module_utils._facts import Gatherer, NodeFiles, check_sysctl_names, metrics_url
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner


def fetch(url: str, timeout: float) -> str:
    # never through a proxy: the address is the node's own loopback
    with open_url(url, timeout=timeout, use_proxy=False, follow_redirects="none") as response:
        return response.read(256).decode("utf-8", "replace")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "metrics_address": {"type": "str", "default": "127.0.0.1:10249"},
            "metrics_timeout": {"type": "float", "default": 2.0},
            "kube_proxy_config": {"type": "path"},
            "metallb": {"type": "str", "default": "auto", "choices": ["auto", "present", "absent"]},
            "extra_sysctls": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["metrics_address"]:
        try:
            metrics_url(params["metrics_address"])
        except ValueError:
            module.fail_json(msg=f"metrics_address '{params['metrics_address']}' is not host:port; nothing was read")
    try:
        check_sysctl_names(params["extra_sysctls"])
        report = Gatherer(
            Runner(module, timeout=60),
            NodeFiles(),
            fetch,
            metrics_address=params["metrics_address"],
            metrics_timeout=params["metrics_timeout"],
            kube_proxy_config=params["kube_proxy_config"],
            metallb=params["metallb"],
            extra_sysctls=params["extra_sysctls"],
        ).gather()
    except DataplaneError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **report)


if __name__ == "__main__":
    main()
