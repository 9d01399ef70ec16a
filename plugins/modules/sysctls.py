#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: sysctls
short_description: Set kernel parameters live and persist them in one file the collection owns
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - Sets a group of kernel parameters (sysctls) in one task, live under C(/proc/sys) and, with O(persist=true),
    in one file under C(/etc/sysctl.d) that this module owns and rewrites as a whole.
  - Other files in C(/etc/sysctl.d) and C(/etc/sysctl.conf) are never read or edited. Keep a key in one
    place only; C(systemd-sysctl) applies files in lexical order, so the default name C(90-...) wins over
    lower-numbered files.
  - Reads first and writes nothing when the live values and the file are already as wanted.
  - A key that does not exist is an error that names it (for example C(net.bridge.*) before C(br_netfilter)
    is loaded), and nothing is changed. In check mode it is a warning instead, since the task that would
    load the module did not really load it.
  - Kernel parameters under C(net.) belong to the network namespace the task runs in.
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.STATEFUL
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  settings:
    description:
      - Kernel parameters and their values, as C(sysctl) names them (C(net.ipv4.ip_forward)).
      - Values with several fields (C(net.ipv4.ip_local_port_range)) are compared with white space folded.
    type: dict
    required: true
  path:
    description: The file the module owns.
    type: path
    default: /etc/sysctl.d/90-kubenode-dataplane.conf
  persist:
    description: Write the settings to O(path) as well as live. With V(false) the file is left as it is.
    type: bool
    default: true
  state:
    description:
      - V(present) sets the values; V(absent) removes the owned file and leaves the live values as they are
        (they return to the kernel's defaults at the next boot).
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
- name: Kernel parameters a Kubernetes node needs
  kubenode.dataplane.sysctls:
    settings:
      net.ipv4.ip_forward: 1
      net.bridge.bridge-nf-call-iptables: 1
      net.bridge.bridge-nf-call-ip6tables: 1

- name: Remove the collection's sysctl file
  kubenode.dataplane.sysctls:
    settings: {}
    state: absent
"""

RETURN = r"""
path:
  description: The owned file.
  returned: always
  type: str
  sample: /etc/sysctl.d/90-kubenode-dataplane.conf
settings:
  description: The live values after the task (the wanted ones; in check mode, what they would be).
  returned: always
  type: dict
  sample: {"net.ipv4.ip_forward": "1"}
changed_keys:
  description: Keys whose live value was (or, in check mode, would be) changed.
  returned: always
  type: list
  elements: str
  sample: ["net.ipv4.ip_forward"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import run_module
from ansible_collections.kubenode.dataplane.plugins.module_utils._sysctl import SysctlBackend


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "settings": {"type": "dict", "required": True},
            "path": {"type": "path", "default": "/etc/sysctl.d/90-kubenode-dataplane.conf"},
            "persist": {"type": "bool", "default": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    run_module(module, SysctlBackend)


if __name__ == "__main__":
    main()
