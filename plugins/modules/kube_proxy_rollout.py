#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kube_proxy_rollout
short_description: Rolling restart of the kube-proxy DaemonSet and a bounded wait for the rollout
version_added: 0.1.0
description:
  - kube-proxy reads its configuration only when it starts. After the ConfigMap changed (see
    M(kubenode.dataplane.kube_proxy_config)), this module restarts the pods of the DaemonSet C(kube-system/kube-proxy)
    the way C(kubectl rollout restart) does, by setting the C(kubectl.kubernetes.io/restartedAt) annotation of the pod
    template, so the DaemonSet controller replaces the pods node by node within its rolling-update budget.
  - It then waits, at most O(wait_timeout) seconds, until the controller has seen the new template and every scheduled
    pod is updated and available, with the rules of C(kubectl rollout status).
  - A DaemonSet with the C(OnDelete) update strategy is refused before anything changes, since the annotation would not
    replace its pods.
  - Talks to the API server of a kubeconfig such as kubeadm's C(/etc/kubernetes/admin.conf) with the Python standard
    library (no kubernetes Python client needed).
author: kubenode.dataplane maintainers (@kubenode)
requirements:
  - PyYAML on the host that runs the module (to read the kubeconfig).
extends_documentation_fragment:
  - kubenode.dataplane.attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode the DaemonSet is read and nothing is patched; C(changed) says whether a restart would happen.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - A restart is an action; with O(restart=true) every run restarts the pods. The C(kubenode.dataplane.kube_proxy)
        role runs it only when the configuration changed or a node runs another mode than the one configured.
options:
  kubeconfig:
    description: Kubeconfig with client certificate and key (or a token), such as kubeadm's admin.conf.
    type: path
    default: /etc/kubernetes/admin.conf
  context:
    description: Context of the kubeconfig to use; its current-context when not given.
    type: str
  namespace:
    description: Namespace of the DaemonSet.
    type: str
    default: kube-system
  name:
    description: Name of the DaemonSet.
    type: str
    default: kube-proxy
  restart:
    description: Restart the pods. With V(false) the module only reads the rollout status (and waits when O(wait=true)).
    type: bool
    default: true
  wait:
    description: Wait until the rollout is complete.
    type: bool
    default: true
  wait_timeout:
    description: Longest wait for the rollout, in seconds; the task fails when it is reached.
    type: int
    default: 300
  poll_interval:
    description: Seconds between two reads of the rollout status.
    type: float
    default: 2.0
  timeout:
    description: Timeout of each API request, in seconds.
    type: int
    default: 30
seealso:
  - module: kubenode.dataplane.kube_proxy_config
  - module: kubenode.dataplane.kube_proxy_node_info
"""

EXAMPLES = r"""
- name: Restart kube-proxy after its ConfigMap changed, and wait for every node
  kubenode.dataplane.kube_proxy_rollout:
    kubeconfig: /etc/kubernetes/admin.conf
    wait_timeout: 600
  when: kube_proxy_config_result is changed

- name: Only wait for a rollout started elsewhere
  kubenode.dataplane.kube_proxy_rollout:
    restart: false
"""

RETURN = r"""
restarted:
  description: Whether the pod template was patched (false in check mode).
  returned: success
  type: bool
rolled_out:
  description: Whether every scheduled pod is updated and available.
  returned: success, unless check mode skipped the wait
  type: bool
progress:
  description: The rollout status in words.
  returned: success, unless check mode skipped the wait
  type: str
  sample: 3 of 3 pods updated and available
generation:
  description: metadata.generation of the DaemonSet.
  returned: success
  type: int
observed_generation:
  description: status.observedGeneration of the DaemonSet.
  returned: success
  type: int
desired:
  description: status.desiredNumberScheduled.
  returned: success
  type: int
updated:
  description: status.updatedNumberScheduled.
  returned: success
  type: int
available:
  description: status.numberAvailable.
  returned: success
  type: int
restarted_at:
  description: The C(kubectl.kubernetes.io/restartedAt) annotation of the pod template.
  returned: success
  type: str
  sample: '2026-01-01T00:00:00Z'
waited:
  description: Seconds spent waiting for the rollout.
  returned: success, unless check mode skipped the wait
  type: float
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

from ansible_collections.kubenode.dataplane.plugins.module_utils import _kube_proxy  # noqa: E402
from ansible_collections.kubenode.dataplane.plugins.module_utils import _kubeapi  # noqa: E402
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            kubeconfig=dict(type="path", default="/etc/kubernetes/admin.conf"),
            context=dict(type="str"),
            namespace=dict(type="str", default="kube-system"),
            name=dict(type="str", default="kube-proxy"),
            restart=dict(type="bool", default=True),
            wait=dict(type="bool", default=True),
            wait_timeout=dict(type="int", default=300),
            poll_interval=dict(type="float", default=2.0),
            timeout=dict(type="int", default=30),
        ),
        supports_check_mode=True,
    )
    if not _kubeapi.HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"))
    p = module.params
    try:
        client = _kubeapi.KubeClient(_kubeapi.load_kubeconfig(p["kubeconfig"], p["context"]), timeout=p["timeout"])
        result = _kube_proxy.rollout(client, p["namespace"], p["name"], restart=p["restart"], wait=p["wait"],
                                     timeout=p["wait_timeout"], interval=p["poll_interval"], check_mode=module.check_mode)
    except DataplaneError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
