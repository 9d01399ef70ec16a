#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: ipvs_services
short_description: Declarative IPVS virtual services and real servers, through netlink
version_added: 0.1.0
description:
  - Manages IP Virtual Server (IPVS, the kernel's layer-4 load balancer) virtual services and their real servers
    as data, through the kernel's generic netlink interface (no C(ipvsadm) needed at run time).
  - A service is identified by protocol, address and port, or by firewall mark and address family. Each listed
    service is owned completely by the task, including its list of real servers.
  - Changes are made in place with the kernel's "edit" requests (like C(ipvsadm -E) and C(ipvsadm -e)), so a weight,
    scheduler or threshold change keeps live connections. New services and real servers are added before anything
    is removed, so capacity never dips.
  - Services that the task does not list are never touched, except with O(purge=true), which removes the unlisted
    services inside O(purge_scope) only. Services whose virtual IP is bound to the kube-proxy interface
    (O(kube_proxy_interface), C(kube-ipvs0)) belong to kube-proxy and are left alone unless O(include_kube_proxy=true).
  - Every input is validated before anything changes (addresses, ports, a scheduler the kernel can load,
    a forwarding method the address families allow); an error names the service at fault, and nothing changes.
    Should the kernel still refuse a request, the services in scope are put back as they were.
  - When nothing differs, nothing is written, so counters, connections and timers survive a run that reports no change.
  - With O(persist=true), the services the task owns are saved in C(ipvsadm-save) format under
    C(/etc/kubenode-dataplane/ipvs/) and restored at boot by the collection's unit C(kubenode-ipvs-restore@NAME.service),
    which never restores kube-proxy's services.
  - In check mode nothing is loaded. When C(ip_vs) is not loaded yet, the module reports that there are no services and
    what it would add, without loading it (reading IPVS through netlink would load it).
author:
  - kubenode.dataplane maintainers (@kubenode)
requirements:
  - pyroute2 >= 0.8.1 on the managed node
  - a kernel with IPVS (C(ip_vs) built in or loadable)
  - ipvsadm on the managed node, with O(persist=true) only (the boot unit restores with C(ipvsadm --restore))
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.STATEFUL
attributes:
  check_mode:
    support: full
    details:
      - Scheduler and persistence-engine modules are checked with C(modprobe --dry-run) in check mode too.
      - C(ip_vs) is not loaded by a check-mode run.
  diff_mode:
    support: full
    details:
      - The diff lists the services in the task's scope like C(ipvsadm -Ln) does, plus the timeouts and
        persistence files the task manages.
  idempotent:
    support: full
options:
  services:
    description:
      - The virtual services this task owns.
      - Each service is given by O(services[].address) and O(services[].port) (with O(services[].protocol)),
        or by O(services[].fwmark) (with O(services[].family)).
    type: list
    elements: dict
    default: []
    suboptions:
      protocol:
        description:
          - Transport protocol of an address service. Ignored for firewall-mark services.
        type: str
        choices: [tcp, udp, sctp]
        default: tcp
      address:
        description:
          - Virtual IP address (IPv4 or IPv6) of the service. Mutually exclusive with O(services[].fwmark).
        type: str
      port:
        description:
          - Virtual port, 0-65535. Port V(0) (all ports) needs O(services[].persistence_timeout), as in C(ipvsadm).
        type: int
      fwmark:
        description:
          - Firewall mark (1-4294967295) of a firewall-mark service, matched on packets marked by nftables or iptables.
        type: int
      family:
        description:
          - Address family of a firewall-mark service. For address services it follows from the address.
        type: str
        choices: [ipv4, ipv6]
      scheduler:
        description:
          - Scheduler name, for example V(rr), V(wrr), V(lc), V(wlc), V(lblc), V(lblcr), V(dh), V(sh), V(sed),
            V(nq), V(fo), V(ovf), V(mh) or V(twos). The kernel must be able to load C(ip_vs_<scheduler>).
        type: str
        default: wlc
      scheduler_flags:
        description:
          - Scheduler flags, as C(ipvsadm -b) spells them. V(sh-fallback) and V(sh-port) apply to V(sh),
            V(mh-fallback) and V(mh-port) to V(mh); V(flag-1) to V(flag-3) to any scheduler.
        type: list
        elements: str
        choices: [flag-1, flag-2, flag-3, mh-fallback, mh-port, sh-fallback, sh-port]
        default: []
      one_packet:
        description:
          - One-packet scheduling (C(ipvsadm -o)), for UDP and firewall-mark services.
        type: bool
        default: false
      persistence_timeout:
        description:
          - Persistence timeout in seconds (C(ipvsadm -p)); V(0) turns persistence off.
        type: int
        default: 0
      persistence_netmask:
        description:
          - Persistence granularity (C(ipvsadm -M)) - a netmask or prefix length for IPv4 (V(255.255.255.0) or V(24)),
            a prefix length 1-128 for IPv6. Defaults to a single client address.
        type: str
      persistence_engine:
        description:
          - Persistence engine (C(ipvsadm --pe)), for example V(sip). Needs O(services[].persistence_timeout).
        type: str
      state:
        description:
          - V(absent) removes the service (its real servers drained first with O(drain=true)).
        type: str
        choices: [present, absent]
        default: present
      real_servers:
        description:
          - The real servers of the service. The list is complete - real servers not listed are removed.
        type: list
        elements: dict
        default: []
        suboptions:
          address:
            description:
              - Address of the real server. A real server of the other address family needs O(services[].real_servers[].forwarding_method=tunnel).
            type: str
            required: true
          port:
            description:
              - Port of the real server; defaults to the service port (V(0) for firewall-mark services).
              - Only V(masquerade) can map to a port other than the service port.
            type: int
          weight:
            description:
              - Weight, 0-65535. V(0) stops new connections to the real server but keeps it.
            type: int
            default: 1
          forwarding_method:
            description:
              - V(masquerade) (NAT, C(ipvsadm -m)), V(route) (direct routing, C(ipvsadm -g)) or V(tunnel) (C(ipvsadm -i)).
              - The default follows C(ipvsadm).
            type: str
            choices: [masquerade, route, tunnel]
            default: route
          upper_threshold:
            description:
              - Upper connection threshold (C(ipvsadm -x)); V(0) means no limit.
            type: int
            default: 0
          lower_threshold:
            description:
              - Lower connection threshold (C(ipvsadm -y)).
            type: int
            default: 0
          tunnel_type:
            description:
              - Tunnel encapsulation with O(services[].real_servers[].forwarding_method=tunnel).
            type: str
            choices: [ipip, gue, gre]
          tunnel_port:
            description:
              - Destination UDP port of V(gue) encapsulation.
            type: int
          tunnel_checksum:
            description:
              - Checksum mode of V(gue) and V(gre) encapsulation.
            type: str
            choices: [nocsum, csum, remcsum]
  purge:
    description:
      - Remove services that are not listed in O(services) but lie inside O(purge_scope).
      - Needs O(purge_scope); services outside it, and kube-proxy's unless O(include_kube_proxy=true), are never removed.
    type: bool
    default: false
  purge_scope:
    description:
      - The services this task owns beyond the listed ones. An address service is inside the scope when it matches
        every criterion given among O(purge_scope.addresses), O(purge_scope.ports) and O(purge_scope.protocols);
        a firewall-mark service when its mark is in O(purge_scope.fwmarks).
    type: dict
    suboptions:
      addresses:
        description:
          - Virtual IP addresses or networks (V(10.0.0.10), V(10.96.0.0/12), V(fd00::/64)).
        type: list
        elements: str
        default: []
      ports:
        description:
          - Ports or port ranges (V(6443), V(30000-32767)).
        type: list
        elements: str
        default: []
      protocols:
        description:
          - Protocols; all when empty.
        type: list
        elements: str
        choices: [tcp, udp, sctp]
        default: []
      fwmarks:
        description:
          - Firewall marks or ranges of marks (V(7), V(100-199)).
        type: list
        elements: str
        default: []
  include_kube_proxy:
    description:
      - Allow the task to list or purge services whose virtual IP is bound to O(kube_proxy_interface), which kube-proxy
        owns in IPVS mode. Off by default, as kube-proxy would fight the change.
    type: bool
    default: false
  kube_proxy_interface:
    description:
      - The dummy interface kube-proxy binds its virtual IPs to in IPVS mode.
    type: str
    default: kube-ipvs0
  drain:
    description:
      - Before removing a real server (or a service), set its weight to 0 and wait until it has no active
        connections, for at most O(drain_timeout) seconds; then remove it. The result lists what was drained.
    type: bool
    default: false
  drain_timeout:
    description:
      - Longest wait, in seconds, for the real servers being drained; they are removed when it expires, with a warning.
    type: int
    default: 60
  timeouts:
    description:
      - IPVS connection timeouts, as C(ipvsadm --set). Unset values stay as they are.
    type: dict
    suboptions:
      tcp:
        description: Timeout of established TCP connections, in seconds.
        type: int
      tcp_fin:
        description: Timeout of TCP connections after a FIN, in seconds.
        type: int
      udp:
        description: Timeout of UDP flows, in seconds.
        type: int
  persist:
    description:
      - Save the services this task owns (listed and in O(purge_scope), never kube-proxy's) and the O(timeouts) in
        C(ipvsadm-save) format as C(/etc/kubenode-dataplane/ipvs/NAME.rules), and enable
        C(kubenode-ipvs-restore@NAME.service), which restores them at boot with C(ipvsadm --restore).
      - V(false) leaves any earlier persistence of O(persist_name) as it is.
    type: bool
    default: false
  persist_name:
    description:
      - Name of the saved set (letters, digits, C(-) and C(_)); one per task that persists, so that tasks with
        different scopes do not overwrite each other.
    type: str
    default: default
notes:
  - IPVS state is per network namespace; the module manages the namespace it runs in.
  - C(ipvsadm-save) leaves out connection thresholds; the files written with O(persist=true) keep them
    (C(-x) and C(-y), which C(ipvsadm --restore) reads).
  - The C(net.ipv4.vs) sysctls that kube-proxy expects are set with M(kubenode.dataplane.sysctls) (the
    C(kubenode.dataplane.ipvs) role does both).
  - kube-proxy also creates NodePort services on the node's own addresses, which are not bound to C(kube-ipvs0);
    keep those out of O(purge_scope).
seealso:
  - module: kubenode.dataplane.ipvs_info
  - name: IPVS in the Linux kernel documentation
    description: The net.ipv4.vs sysctls.
    link: https://docs.kernel.org/networking/ipvs-sysctl.html
"""

EXAMPLES = r"""
- name: A node-local balancer in front of the Kubernetes API servers (virtual IP on a dummy interface), kept across reboots
  kubenode.dataplane.ipvs_services:
    services:
      - address: 169.254.20.10
        port: 6443
        scheduler: rr
        real_servers:
          - {address: 192.0.2.11, port: 6443, forwarding_method: masquerade}
          - {address: 192.0.2.12, port: 6443, forwarding_method: masquerade}
          - {address: 192.0.2.13, port: 6443, forwarding_method: masquerade}
    persist: true
    persist_name: apiserver

- name: A DNS service over UDP with source hashing and one-packet scheduling
  kubenode.dataplane.ipvs_services:
    services:
      - protocol: udp
        address: 10.0.0.53
        port: 53
        scheduler: sh
        scheduler_flags: [sh-fallback, sh-port]
        one_packet: true
        real_servers:
          - {address: 10.0.1.1, forwarding_method: route}
          - {address: 10.0.1.2, forwarding_method: route}

- name: Own every service on 10.0.0.0/24 ports 80-443, drain what goes away
  kubenode.dataplane.ipvs_services:
    services:
      - address: 10.0.0.10
        port: 80
        scheduler: wrr
        real_servers:
          - {address: 10.0.1.1, port: 8080, weight: 3, forwarding_method: masquerade}
          - {address: 10.0.1.2, port: 8080, weight: 1, forwarding_method: masquerade}
    purge: true
    purge_scope:
      addresses: [10.0.0.0/24]
      ports: ["80-443"]
    drain: true
    drain_timeout: 30

- name: A firewall-mark service for IPv6 with persistence per /64
  kubenode.dataplane.ipvs_services:
    services:
      - fwmark: 7
        family: ipv6
        scheduler: wlc
        persistence_timeout: 300
        persistence_netmask: "64"
        real_servers:
          - {address: "fd00::11", forwarding_method: route}
          - {address: "fd00::12", forwarding_method: route}

- name: IPVS connection timeouts like kube-proxy's defaults, kept across reboots
  kubenode.dataplane.ipvs_services:
    timeouts: {tcp: 900, tcp_fin: 120, udp: 300}
    persist: true
    persist_name: timeouts

- name: Remove a service
  kubenode.dataplane.ipvs_services:
    services:
      - {address: 10.0.0.10, port: 80, state: absent}
"""

RETURN = r"""
operations:
  description:
    - The changes made (or, in check mode, to be made), written as the C(ipvsadm) commands they amount to,
      in the order they were sent. Empty when nothing changed.
  returned: always
  type: list
  elements: str
  sample: ["-A -t 10.0.0.10:80 -s rr", "-a -t 10.0.0.10:80 -r 10.0.1.1:8080 -m -w 1", "-e -t 10.0.0.10:80 -r 10.0.1.2:8080 -m -w 3"]
changed_services:
  description:
    - The services this run added or changed, as they are after it (in check mode, as they would be), sorted like
      C(ipvsadm -Ln). Removed services and real servers are in RV(operations). Empty when nothing changed.
    - Only what changed, so that a run over thousands of services does not send them all back each time;
      M(kubenode.dataplane.ipvs_info) returns every service.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The service as C(ipvsadm -Ln) names it.
      type: str
      sample: TCP 10.0.0.10:80
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
      description: Scheduler name.
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
    real_servers:
      description: Real servers with address, port, weight, forwarding_method, upper_threshold, lower_threshold (and the tunnel settings).
      type: list
      elements: dict
  sample:
    - name: TCP 10.0.0.10:80
      family: ipv4
      protocol: tcp
      address: 10.0.0.10
      port: 80
      scheduler: rr
      scheduler_flags: []
      one_packet: false
      persistence_timeout: 0
      persistence_netmask: 255.255.255.255
      persistence_engine: null
      real_servers:
        - {address: 10.0.1.1, port: 8080, weight: 1, forwarding_method: masquerade, upper_threshold: 0, lower_threshold: 0}
ipvs_loaded:
  description: Whether C(ip_vs) was loaded before the run.
  returned: always
  type: bool
kube_proxy_addresses:
  description: The addresses found on O(kube_proxy_interface); services on them were left alone unless O(include_kube_proxy=true).
  returned: always
  type: list
  elements: str
drained:
  description: The real servers drained before removal (O(drain=true)), how long the module waited and the active connections left.
  returned: always
  type: list
  elements: dict
  sample: [{service: TCP 10.0.0.10:80, real_server: "10.0.1.2:8080", waited: 4.5, active_connections_left: 0}]
timeouts:
  description: The IPVS timeouts after the run, when O(timeouts) was given.
  returned: when O(timeouts) is given
  type: dict
  sample: {tcp: 900, tcp_fin: 120, udp: 300}
persist_files:
  description: The files and the unit link managed for O(persist=true).
  returned: when O(persist=true)
  type: list
  elements: str
  sample:
    - /etc/kubenode-dataplane/ipvs/default.rules
    - /etc/systemd/system/kubenode-ipvs-restore@.service
    - /etc/systemd/system/sysinit.target.wants/kubenode-ipvs-restore@default.service
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubenode.dataplane.plugins.module_utils._argspec import deferred
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import run_module
from ansible_collections.kubenode.dataplane.plugins.module_utils._ipvs import SERVICE_OPTIONS, ServicesBackend
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import Runner

ARGUMENT_SPEC = dict(
    services=dict(type="list", elements="dict", default=[], options=SERVICE_OPTIONS),
    purge=dict(type="bool", default=False),
    purge_scope=dict(type="dict", options=dict(
        addresses=dict(type="list", elements="str", default=[]),
        ports=dict(type="list", elements="str", default=[]),
        protocols=dict(type="list", elements="str", choices=["tcp", "udp", "sctp"], default=[]),
        fwmarks=dict(type="list", elements="str", default=[]),
    )),
    include_kube_proxy=dict(type="bool", default=False),
    kube_proxy_interface=dict(type="str", default="kube-ipvs0"),
    drain=dict(type="bool", default=False),
    drain_timeout=dict(type="int", default=60),
    timeouts=dict(type="dict", options=dict(tcp=dict(type="int"), tcp_fin=dict(type="int"), udp=dict(type="int"))),
    persist=dict(type="bool", default=False),
    persist_name=dict(type="str", default="default"),
)


def main() -> None:
    # the services' suboptions are checked by the backend (_argspec.validate_list), with the same result
    module = AnsibleModule(argument_spec=deferred(ARGUMENT_SPEC, "services"), supports_check_mode=True)
    run_module(module, lambda m: ServicesBackend(m, Runner(m), m.params))


if __name__ == "__main__":
    main()
