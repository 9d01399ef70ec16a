# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: netns
short_description: Run tasks inside a Linux network namespace of the controller
description:
  - Runs each task inside a named network namespace on the controller itself, with
    C(ip netns exec NAME), so that one machine can stand in for several hosts with their own
    interfaces, addresses, routes, nftables and iptables rulesets.
  - The file system, processes and users are the controller's; only the network stack (and
    C(/sys), which C(ip netns exec) remounts for the namespace) is the namespace's own.
  - Used by the collection's test hosts, and useful for routers, demos and labs.
  - The controller must run as root (or have C(CAP_SYS_ADMIN)) to enter a namespace.
    Privilege escalation is not supported by this plugin.
  - Commands get the controller's environment without C(PYTHONUNBUFFERED), as a remote host would not
    have it. That variable (common on CI machines and in containers) makes Python read a program from
    standard input one byte per system call, which with pipelining is how a module arrives (about 0.5 s
    more for a module of 600 KB with its arguments).
author:
  - kubenode.dataplane maintainers (@kubenode)
version_added: 0.1.0
options:
  netns_name:
    description:
      - Name of the network namespace, as listed by C(ip netns list).
      - Defaults to the inventory host name (or C(ansible_host) when set).
    type: str
    vars:
      # the last variable that is set wins
      - name: ansible_host
      - name: ansible_netns_name
  ip_executable:
    description:
      - Path of the C(ip) program used to enter the namespace.
    type: str
    default: ip
    vars:
      - name: ansible_netns_ip_executable
  pipelining:
    description:
      - Send modules to the interpreter on standard input instead of through a temporary file.
    type: bool
    default: true
    vars:
      - name: ansible_pipelining
"""

EXAMPLES = r"""
# inventory.yml: two hosts that are network namespaces on the controller
# all:
#   vars:
#     ansible_connection: kubenode.dataplane.netns
#   hosts:
#     worker1:
#       ansible_netns_name: lab-worker1
#     worker2:
#       ansible_netns_name: lab-worker2

- name: Show the addresses inside each namespace
  hosts: all
  gather_facts: false
  tasks:
    - name: List addresses
      ansible.builtin.command:
        argv: [ip, -br, addr]
      changed_when: false
"""

import os
import shutil
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection.local import Connection as LocalConnection
from ansible.utils.display import Display

display = Display()


class Connection(LocalConnection):
    """Local connection whose commands enter a network namespace first."""

    transport = "kubenode.dataplane.netns"
    has_pipelining = True

    def _netns(self) -> str:
        name = self.get_option("netns_name") or self._play_context.remote_addr
        if not name:
            raise AnsibleConnectionFailure("netns connection: no namespace name (set ansible_netns_name)")
        return name

    def _connect(self):
        super()._connect()
        name = self._netns()
        if not os.path.exists(os.path.join("/run/netns", name)):
            raise AnsibleConnectionFailure(
                f"network namespace '{name}' does not exist (ip netns list does not show it)"
            )
        return self

    def exec_command(self, cmd, in_data=None, sudoable=True):
        # ConnectionBase bookkeeping only; the command itself is run below.
        super(LocalConnection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if self.become and sudoable and self.become._id:
            raise AnsibleError("the kubenode.dataplane.netns connection does not support become; run the controller as root")
        ip = shutil.which(self.get_option("ip_executable")) or self.get_option("ip_executable")
        executable = "/bin/sh"
        argv = [ip, "netns", "exec", self._netns(), executable, "-c", to_text(cmd)]
        display.vvv(f"EXEC {argv!r}", host=self._netns())
        proc = subprocess.Popen(
            [to_bytes(a, errors="surrogate_or_strict") for a in argv],
            cwd=self.cwd,
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = proc.communicate(in_data)
        return proc.returncode, stdout, stderr
