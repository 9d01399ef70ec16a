#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: ipvs_info
short_description: IPVS virtual services, real servers, counters and timeouts as data
version_added: 0.1.0
description:
  - Reads every IP Virtual Server service of the network namespace the task runs in, with its real servers,
    connection counters and traffic statistics, the IPVS timeouts, version, connection table size and the
    C(net.ipv4.vs) sysctls, through the kernel's generic netlink interface.
  - Services whose virtual IP is bound to O(kube_proxy_interface) are marked as kube-proxy's.
  - Loads nothing - when C(ip_vs) is not loaded, it says so and returns no services.
  - The services come back in the shape O(kubenode.dataplane.ipvs_services#module:services) takes.
author:
  - kubenode.dataplane maintainers (@kubenode)
requirements:
  - pyroute2 >= 0.8.1 on the managed node
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.INFO_MODULE
options:
  kube_proxy_interface:
    description:
      - The dummy interface kube-proxy binds its virtual IPs to in IPVS mode.
    type: str
    default: kube-ipvs0
  counters:
    description:
      - Include traffic statistics and connection counters of services and real servers.
    type: bool
    default: true
seealso:
  - module: kubenode.dataplane.ipvs_services
"""

EXAMPLES = r"""
- name: Read the IPVS services of the node
  kubenode.dataplane.ipvs_info:
  register: ipvs

- name: Show the services that are not kube-proxy's
  ansible.builtin.debug:
    msg: "{{ ipvs.services | rejectattr('kube_proxy') | map(attribute='name') | list }}"

- name: Fail when a real server of the API-server balancer has weight 0
  ansible.builtin.assert:
    that:
      - ipvs.services | selectattr('name', 'equalto', 'TCP 169.254.20.10:6443') | map(attribute='real_servers')
        | flatten | selectattr('weight', 'equalto', 0) | list | length == 0
"""

RETURN = r"""
ipvs_loaded:
  description: Whether C(ip_vs) is loaded (or built in); nothing else is read when it is not.
  returned: always
  type: bool
  sample: true
version:
  description: IPVS version of the kernel.
  returned: always
  type: str
  sample: 1.2.1
connection_table_size:
  description: Size of the IPVS connection hash table.
  returned: always
  type: int
  sample: 4096
timeouts:
  description: Connection timeouts in seconds, or null when C(ip_vs) is not loaded.
  returned: always
  type: dict
  sample: {tcp: 900, tcp_fin: 120, udp: 300}
kube_proxy_addresses:
  description: Addresses bound to O(kube_proxy_interface).
  returned: always
  type: list
  elements: str
  sample: ["10.96.0.1", "10.96.0.10"]
sysctls:
  description: The C(net.ipv4.vs) sysctls and their values.
  returned: always
  type: dict
  sample: {"net.ipv4.vs.conntrack": "1", "net.ipv4.vs.expire_nodest_conn": "1"}
services:
  description: Every IPVS service, sorted like C(ipvsadm -Ln).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The service as C(ipvsadm -Ln) names it.
      type: str
      sample: TCP 10.96.0.1:443
    family:
      description: V(ipv4) or V(ipv6).
      type: str
    protocol:
      description: V(tcp), V(udp) or V(sctp); absent for firewall-mark services.
      type: str
    address:
      description: Virtual IP; absent for firewall-mark services.
      type: str
    port:
      description: Virtual port; absent for firewall-mark services.
      type: int
    fwmark:
      description: Firewall mark; only for firewall-mark services.
      type: int
    scheduler:
      description: Scheduler.
      type: str
    scheduler_flags:
      description: Scheduler flags.
      type: list
      elements: str
    one_packet:
      description: One-packet scheduling.
      type: bool
    persistence_timeout:
      description: Persistence timeout in seconds, 0 when off.
      type: int
    persistence_netmask:
      description: Persistence netmask (IPv4) or prefix length (IPv6).
      type: str
    persistence_engine:
      description: Persistence engine, or null.
      type: str
    kube_proxy:
      description: Whether the virtual IP is bound to O(kube_proxy_interface).
      type: bool
    stats:
      description: Traffic statistics of the service (connections, in/out packets and bytes, and their rates), with O(counters=true).
      type: dict
    real_servers:
      description:
        - Real servers with address, port, weight, forwarding_method, thresholds (and tunnel settings);
          with O(counters=true) also active_connections, inactive_connections, persistent_connections and stats.
      type: list
      elements: dict
  sample:
    - name: TCP 169.254.20.10:6443
      family: ipv4
      protocol: tcp
      address: 169.254.20.10
      port: 6443
      scheduler: rr
      scheduler_flags: []
      one_packet: false
      persistence_timeout: 0
      persistence_netmask: 255.255.255.255
      persistence_engine: null
      kube_proxy: false
      stats: {connections: 12, in_packets: 80, out_packets: 64, in_bytes: 9000, out_bytes: 41000}
      real_servers:
        - address: 192.0.2.11
          port: 6443
          weight: 1
          forwarding_method: masquerade
          upper_threshold: 0
          lower_threshold: 0
          active_connections: 2
          inactive_connections: 4
          persistent_connections: 0
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubenode.dataplane.plugins.module_utils._ipvs import gather_info
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            kube_proxy_interface=dict(type="str", default="kube-ipvs0"),
            counters=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    try:
        info = gather_info(module.params["kube_proxy_interface"], module.params["counters"])
    except DataplaneError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()
