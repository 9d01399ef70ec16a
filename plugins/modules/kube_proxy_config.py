#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kube_proxy_config
short_description: Merge settings into kube-proxy's KubeProxyConfiguration, validated, in a file, text or the cluster's ConfigMap
version_added: 0.1.0
description:
  - Reads a KubeProxyConfiguration (C(kubeproxy.config.k8s.io/v1alpha1)) from a file on the host (a plain kube-proxy
    configuration, or the matching document of a multi-document kubeadm configuration), from given text, or from the
    ConfigMap C(kube-system/kube-proxy) (key C(config.conf)) of a kubeadm cluster.
  - Merges the requested settings over it and keeps every other field. Only the lines of the values that change are
    rewritten; comments, quoting, key order and the other documents of the file stay byte for byte as they were.
  - Validates the whole result against a JSON Schema of the type written from the upstream Go types and kube-proxy's own
    validation (shipped with the collection and published as C(docs/schemas/kube-proxy-config.v1alpha1.schema.json)). Unknown
    fields, wrong types and bad enumeration values are rejected with their JSON path, and nothing is written.
  - The requested settings are also checked on the controller before anything is sent to the host (with the
    C(jsonschema) package when the controller has it), through the action plugin of the same name.
  - A file is written atomically (a temporary file in the same directory renamed over it). The ConfigMap is written
    with a PUT that carries the resourceVersion that was read; when another writer changed it in between, the API
    server answers 409, the settings are merged again over the newer version and the PUT retried.
  - When nothing differs, nothing is written.
author: kubenode.dataplane maintainers (@kubenode)
requirements:
  - PyYAML on the host that runs the module.
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.STATEFUL
attributes:
  check_mode:
    details:
      - The result is computed and validated in check mode too, so invalid settings fail in check mode.
      - With O(configmap), check mode reads the ConfigMap and writes nothing.
  diff_mode:
    details:
      - The diff is the text of the file, of O(content) or of the ConfigMap key, before and after.
options:
  path:
    description:
      - File holding the KubeProxyConfiguration, alone or as one document of a kubeadm configuration.
      - When the file is a kubeadm configuration without a KubeProxyConfiguration, one is appended as a new document.
      - Exactly one of O(path), O(content) and O(configmap) is required.
    type: path
  content:
    description:
      - The text of a KubeProxyConfiguration, for example the value of the C(config.conf) key of the kube-proxy ConfigMap
        read by other means. Nothing is written; the merged text is returned in RV(content).
    type: str
  configmap:
    description:
      - Read and write the configuration in a ConfigMap of the cluster, through the API server of a kubeconfig.
    type: dict
    suboptions:
      kubeconfig:
        description:
          - Kubeconfig with client certificate and key (or a token), such as kubeadm's admin.conf.
          - Exec and auth-provider plugins are not supported.
        type: path
        default: /etc/kubernetes/admin.conf
      context:
        description: Context of the kubeconfig to use; its current-context when not given.
        type: str
      namespace:
        description: Namespace of the ConfigMap.
        type: str
        default: kube-system
      name:
        description: Name of the ConfigMap.
        type: str
        default: kube-proxy
      key:
        description: Key of the ConfigMap that holds the KubeProxyConfiguration.
        type: str
        default: config.conf
      conflict_retries:
        description: How many times to merge again and retry when the ConfigMap changed between read and write.
        type: int
        default: 5
      timeout:
        description: Timeout of each API request, in seconds.
        type: int
        default: 30
  create:
    description:
      - Create O(path) with a new KubeProxyConfiguration holding the requested settings when it does not exist.
      - When false, a missing file is an error.
    type: bool
    default: false
  backup:
    description: Keep a timestamped copy of O(path) before changing it.
    type: bool
    default: false
  mode:
    description:
      - C(mode), the proxy mode. An empty string lets kube-proxy pick its default (iptables on Linux).
      - ipvs mode is deprecated since Kubernetes 1.35 (KEP-5495); a warning says so.
    type: str
    choices: ['', iptables, ipvs, nftables]
  ipvs:
    description: Fields of C(ipvs).
    type: dict
    suboptions:
      scheduler:
        description: C(ipvs.scheduler); empty for kube-proxy's default (rr).
        type: str
        choices: ['', rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq]
      strict_arp:
        description: C(ipvs.strictARP), needed by MetalLB and kube-vip in ipvs mode.
        type: bool
      exclude_cidrs:
        description: C(ipvs.excludeCIDRs), CIDRs whose IPVS services kube-proxy leaves alone when it cleans up.
        type: list
        elements: str
      tcp_timeout:
        description: C(ipvs.tcpTimeout), a Go duration such as V(900s); V(0s) keeps the kernel's value.
        type: str
      tcp_fin_timeout:
        description: C(ipvs.tcpFinTimeout), a Go duration.
        type: str
      udp_timeout:
        description: C(ipvs.udpTimeout), a Go duration.
        type: str
      sync_period:
        description: C(ipvs.syncPeriod), a Go duration.
        type: str
      min_sync_period:
        description: C(ipvs.minSyncPeriod), a Go duration.
        type: str
  iptables:
    description: Fields of C(iptables).
    type: dict
    suboptions:
      masquerade_bit:
        description: C(iptables.masqueradeBit), 0 to 31.
        type: int
      masquerade_all:
        description: C(iptables.masqueradeAll).
        type: bool
      sync_period:
        description: C(iptables.syncPeriod), a Go duration.
        type: str
      min_sync_period:
        description: C(iptables.minSyncPeriod), a Go duration.
        type: str
  nftables:
    description: Fields of C(nftables).
    type: dict
    suboptions:
      masquerade_bit:
        description: C(nftables.masqueradeBit), 0 to 31.
        type: int
      masquerade_all:
        description: C(nftables.masqueradeAll).
        type: bool
      sync_period:
        description: C(nftables.syncPeriod), a Go duration.
        type: str
      min_sync_period:
        description: C(nftables.minSyncPeriod), a Go duration.
        type: str
  conntrack:
    description: Fields of C(conntrack).
    type: dict
    suboptions:
      max_per_core:
        description: C(conntrack.maxPerCore); V(0) leaves the kernel's limit as it is.
        type: int
      min:
        description: C(conntrack.min).
        type: int
      tcp_established_timeout:
        description: C(conntrack.tcpEstablishedTimeout), a Go duration.
        type: str
      tcp_close_wait_timeout:
        description: C(conntrack.tcpCloseWaitTimeout), a Go duration.
        type: str
      tcp_be_liberal:
        description: C(conntrack.tcpBeLiberal).
        type: bool
      udp_timeout:
        description: C(conntrack.udpTimeout), a Go duration.
        type: str
      udp_stream_timeout:
        description: C(conntrack.udpStreamTimeout), a Go duration.
        type: str
  cluster_cidr:
    description: C(clusterCIDR), the pod CIDR, or a comma-separated IPv4,IPv6 pair.
    type: str
  node_port_addresses:
    description: C(nodePortAddresses), CIDRs or the keywords V(primary), V(localhost), V(all).
    type: list
    elements: str
  metrics_bind_address:
    description:
      - C(metricsBindAddress), IP:port of the metrics server, which also answers C(/proxyMode).
      - Empty for kube-proxy's default, 127.0.0.1:10249.
    type: str
  settings:
    description:
      - Any other fields, with their upstream names (for example C(featureGates), C(detectLocalMode)), merged key by
        key into the document; a list or a scalar replaces what is there, V(null) sets a field to null.
      - The named options above win over the same fields given here.
    type: dict
    default: {}
notes:
  - kubeadm clusters keep kube-proxy's configuration in the ConfigMap C(kube-system/kube-proxy), key C(config.conf) (not
    C(kubeconfig.conf), and not a static Pod manifest). kube-proxy reads it only when it starts, so a change takes
    effect after a rolling restart of the DaemonSet; see M(kubenode.dataplane.kube_proxy_rollout) and the
    C(kubenode.dataplane.kube_proxy) role, which also verify the mode in force on every node.
seealso:
  - module: kubenode.dataplane.kube_proxy_rollout
  - module: kubenode.dataplane.kube_proxy_node_info
  - name: kube-proxy configuration reference (v1alpha1)
    description: The upstream description of every field.
    link: https://kubernetes.io/docs/reference/config-api/kube-proxy-config.v1alpha1/
"""

EXAMPLES = r"""
- name: Switch a kubeadm cluster's kube-proxy to nftables mode (from a control-plane node)
  kubenode.dataplane.kube_proxy_config:
    configmap:
      kubeconfig: /etc/kubernetes/admin.conf
    mode: nftables
  register: kube_proxy

- name: Set ipvs mode with strict ARP in the kubeadm configuration used by kubeadm init
  kubenode.dataplane.kube_proxy_config:
    path: /etc/kubernetes/kubeadm-config.yaml
    mode: ipvs
    ipvs:
      scheduler: rr
      strict_arp: true

- name: Configure a kube-proxy that runs as a systemd service, creating the file if needed
  kubenode.dataplane.kube_proxy_config:
    path: /var/lib/kube-proxy/kube-proxy-config.yaml
    create: true
    mode: nftables
    cluster_cidr: 10.200.0.0/16
    metrics_bind_address: 127.0.0.1:10249
    settings:
      clientConnection:
        kubeconfig: /var/lib/kube-proxy/kubeconfig

- name: Merge settings into text read elsewhere, write nothing
  kubenode.dataplane.kube_proxy_config:
    content: "{{ kube_proxy_configmap.data['config.conf'] }}"
    mode: iptables
    iptables:
      masquerade_all: true
  register: merged
"""

RETURN = r"""
config:
  description: The merged KubeProxyConfiguration.
  returned: success
  type: dict
  sample: {apiVersion: kubeproxy.config.k8s.io/v1alpha1, kind: KubeProxyConfiguration, mode: ipvs}
content:
  description: The whole text after the merge (the file, the given content, or the ConfigMap key).
  returned: success
  type: str
proxy_mode:
  description: The C(mode) field after the merge (empty when kube-proxy picks its default).
  returned: success
  type: str
  sample: ipvs
effective_mode:
  description: The mode kube-proxy runs with this configuration on Linux (an empty mode means iptables).
  returned: success
  type: str
  sample: ipvs
previous_proxy_mode:
  description: The C(mode) field before the merge.
  returned: success
  type: str
  sample: ''
previous_effective_mode:
  description: The mode the configuration selected before the merge.
  returned: success
  type: str
  sample: iptables
changes:
  description: JSON paths of the fields that changed (V($) when the file was created).
  returned: success
  type: list
  elements: str
  sample: ['$.mode']
created:
  description: Whether O(path) did not exist and was (or in check mode would be) created.
  returned: success
  type: bool
document_index:
  description: Index of the KubeProxyConfiguration among the YAML documents of the text.
  returned: success
  type: int
  sample: 2
proxy_mode_url:
  description: Where kube-proxy answers C(/proxyMode) on its node with this configuration (from C(metricsBindAddress)).
  returned: success
  type: str
  sample: http://127.0.0.1:10249/proxyMode
file:
  description: The file that was read.
  returned: when O(path) is given
  type: str
backup_file:
  description: The copy made before the change.
  returned: when O(backup=true) and the file changed
  type: str
configmap:
  description: The ConfigMap that was read, and its resourceVersion after the module ran.
  returned: when O(configmap) is given
  type: dict
  sample: {namespace: kube-system, name: kube-proxy, key: config.conf, resource_version: '1234'}
conflicts:
  description: How many times the PUT met a concurrent change (409) and was merged again and retried.
  returned: when O(configmap) is given
  type: int
  sample: 0
errors:
  description: Every validation error, with its JSON path.
  returned: failure, when the document or the settings are invalid
  type: list
  elements: dict
  sample: [{path: $.ipvs.scheduler, message: "'fast' is not one of '', 'rr', 'wrr'"}]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kube_proxy  # noqa: E402
from ansible_collections.kubenode.dataplane.plugins.module_utils import _kubeapi  # noqa: E402
from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import run_module  # noqa: E402


def make_backend(module: AnsibleModule) -> _kube_proxy.ConfigBackend:
    params = module.params
    if params["path"] is not None:
        source: _kube_proxy.Source = _kube_proxy.FileSource(module, params["path"], params["create"], params["backup"])
    elif params["content"] is not None:
        source = _kube_proxy.ContentSource(params["content"])
    else:
        cm = params["configmap"]
        client = _kubeapi.KubeClient(_kubeapi.load_kubeconfig(cm["kubeconfig"], cm["context"]), timeout=cm["timeout"])
        source = _kube_proxy.ConfigMapSource(client, cm["namespace"], cm["name"], cm["key"], cm["conflict_retries"])
    return _kube_proxy.ConfigBackend(source, _kube_proxy.overlay(params), module.warn)


def main() -> None:
    argument_spec = dict(
        path=dict(type="path"),
        content=dict(type="str"),
        configmap=dict(
            type="dict",
            options=dict(
                kubeconfig=dict(type="path", default="/etc/kubernetes/admin.conf"),
                context=dict(type="str"),
                namespace=dict(type="str", default="kube-system"),
                name=dict(type="str", default="kube-proxy"),
                key=dict(type="str", default="config.conf", no_log=False),
                conflict_retries=dict(type="int", default=5),
                timeout=dict(type="int", default=30),
            ),
        ),
        create=dict(type="bool", default=False),
        backup=dict(type="bool", default=False),
    )
    argument_spec.update(_kube_proxy.SETTINGS_SPEC)
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=[("path", "content", "configmap")],
        required_one_of=[("path", "content", "configmap")],
        supports_check_mode=True,
    )
    if not _kube_proxy.HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"))
    run_module(module, make_backend)


if __name__ == "__main__":
    main()
