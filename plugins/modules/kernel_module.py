#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: kernel_module
short_description: Load, unload, reload and persist a set of Linux kernel modules in one task
version_added: 0.1.0
description:
  - Manages a list of kernel modules in one call, each with its own O(modules[].state), O(modules[].params) and
    O(modules[].persistent); the task-wide options are the defaults for every listed module.
  - The state is read from C(/proc/modules), C(/sys/module) and the running kernel's C(modules.dep), C(modules.builtin)
    and C(modules.builtin.modinfo). A module built into the kernel counts as present and is reported with RV(modules[].builtin=true).
  - Renamed modules and aliases are resolved and reported (C(nf_conntrack_ipv4) means C(nf_conntrack) on kernels 4.19 and
    later; C(-) and C(_) are the same character). Every name is checked before anything changes, so one unknown module fails
    the whole task, naming the module and the kernel release, with nothing changed.
  - Parameters are compared with C(/sys/module/NAME/parameters). A loaded module whose parameters differ is reloaded
    when O(reload=true) and no other module uses it; otherwise the task fails naming its holders.
  - Modules are unloaded with C(rmmod) in dependency order, exactly the ones listed (their dependencies stay loaded), and
    only when nothing else uses them.
  - Persistence is written only to two files the collection owns, C(/etc/modules-load.d/PREFIX.conf) (read by
    systemd-modules-load at boot) and C(/etc/modprobe.d/PREFIX.conf) (parameters and blocks), each replaced atomically.
    No other file is ever edited, so modules configured by the distribution or by other tools stay as they are.
  - The C(/bin/false) install command used by O(persistent=disabled) also makes an explicit C(modprobe NAME) fail, which is
    what keeps a module out for good; C(blacklist) alone only stops loading by alias.
  - On a kernel built without module support (no C(/proc/modules)) built-in modules are still recognised, from
    C(/sys/module) and, for the common dataplane modules, from the kernel configuration (C(/proc/config.gz)).
author: kubenode.dataplane maintainers (@kubenode)
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.STATEFUL
attributes:
  check_mode:
    details:
      - Check mode runs C(modprobe -n -v) on the modules to load, checks parameters against C(modinfo) and
        C(/sys/module), and refuses unloads of modules in use, exactly as a real run would; it loads, unloads and writes nothing.
  diff_mode:
    details:
      - The diff shows the state of every listed module with the planned action (load, unload, reload) and the full text
        of both persistence files before and after.
options:
  name:
    description:
      - Kernel modules managed with the task-wide settings (O(state), O(params), O(persistent), O(reload), O(ignore_builtin)).
      - Module names or aliases; C(-) and C(_) are interchangeable.
      - At least one of O(name) and O(modules) must list a module.
    type: list
    elements: str
    aliases: [names]
  modules:
    description:
      - Kernel modules with settings of their own; a setting left out takes the task-wide value.
    type: list
    elements: dict
    suboptions:
      name:
        description: Module name or alias.
        type: str
        required: true
      state:
        description: Like the task-wide O(state), for this module.
        type: str
        choices: [present, absent]
      params:
        description: Like the task-wide O(params), for this module.
        type: dict
      persistent:
        description: Like the task-wide O(persistent), for this module.
        type: str
        choices: [present, absent, disabled]
      reload:
        description: Like the task-wide O(reload), for this module.
        type: bool
      ignore_builtin:
        description: Like the task-wide O(ignore_builtin), for this module.
        type: bool
  state:
    description:
      - V(present) loads the module (a built-in module is always present); V(absent) unloads it.
      - When not set, V(present), or V(absent) for a module with O(persistent=disabled).
    type: str
    choices: [present, absent]
  params:
    description:
      - Module parameters as a dictionary of names to values, for example C(hashsize) to C(131072). Booleans become C(Y)/C(N).
      - Compared with C(/sys/module/NAME/parameters); a parameter the kernel does not show there cannot be verified and is
        reported in a warning. Parameters are given to C(modprobe) when loading and, with O(persistent=present), written as an
        C(options) line to the collection's C(modprobe.d) file so that they apply at boot too.
      - When not given, the parameters the collection persisted for a module are kept, so a task that only loads a module
        does not undo another task that set its parameters; an empty dictionary removes them.
      - Used as a default only for modules to be loaded; giving parameters for a module to unload is an error.
    type: dict
  persistent:
    description:
      - V(present) loads the module at boot (a line in C(/etc/modules-load.d/PREFIX.conf)) with its O(params) (an
        C(options) line in C(/etc/modprobe.d/PREFIX.conf)).
      - V(absent) removes the module from the collection's files; other files are left alone.
      - V(disabled) blocks the module from loading at all (C(blacklist) and C(install NAME /bin/false) in the collection's
        C(modprobe.d) file); implies O(state=absent).
      - When not set, the collection's files are left as they are for this module.
    type: str
    choices: [present, absent, disabled]
  reload:
    description:
      - When a loaded module's parameters differ from O(params), unload it and load it again with them. Refused when
        another module or a user holds it; the error names the holders.
      - When V(false), differing parameters fail the task instead.
    type: bool
    default: false
  ignore_builtin:
    description:
      - With O(state=absent), accept that a module built into the kernel cannot be unloaded (a warning instead of an error).
    type: bool
    default: false
  prefix:
    description:
      - Name (without C(.conf)) of the collection's files in C(/etc/modules-load.d) and C(/etc/modprobe.d).
      - Tasks with the same prefix share these files; each task changes only the lines of the modules it lists.
    type: str
    default: kubenode-dataplane
notes:
  - Needs C(modprobe), C(rmmod) and C(modinfo) from kmod on the managed node when modules are loaded or unloaded.
  - Unloading removes exactly the listed modules; modules that were loaded as their dependencies stay loaded.
seealso:
  - module: community.general.modprobe
    description: Loads one module per call, with parameters as a string, and comments lines out of every file in
      C(/etc/modules-load.d) to unpersist.
  - name: modules-load.d(5)
    description: Configure kernel modules to load at boot.
    link: https://www.freedesktop.org/software/systemd/man/latest/modules-load.d.html
  - name: modprobe.d(5)
    description: Configuration directory for modprobe.
    link: https://man7.org/linux/man-pages/man5/modprobe.d.5.html
"""

EXAMPLES = r"""
- name: Load the kube-proxy IPVS set, bridge netfilter and overlay, now and at every boot
  kubenode.dataplane.kernel_module:
    name: [ip_vs, ip_vs_rr, ip_vs_wrr, ip_vs_sh, nf_conntrack, br_netfilter, overlay]
    persistent: present

- name: Old playbooks still work on new kernels (nf_conntrack_ipv4 is nf_conntrack since Linux 4.19)
  kubenode.dataplane.kernel_module:
    name: nf_conntrack_ipv4

- name: Load overlay with redirect_dir on, reloading it if it is loaded with other parameters
  kubenode.dataplane.kernel_module:
    modules:
      - name: overlay
        params:
          redirect_dir: true
        reload: true
    persistent: present

- name: One task, different settings per module
  kubenode.dataplane.kernel_module:
    persistent: present
    modules:
      - name: ip_vs
      - name: nf_conntrack
        params:
          hashsize: 262144
      - name: dccp
        persistent: disabled
      - name: ip_vs_lc
        state: absent
        persistent: absent

- name: Unload a module even if a node's kernel has it built in
  kubenode.dataplane.kernel_module:
    name: br_netfilter
    state: absent
    persistent: absent
    ignore_builtin: true

- name: Use files of your own, for example one per team
  kubenode.dataplane.kernel_module:
    name: [wireguard]
    persistent: present
    prefix: 50-network-team
"""

RETURN = r"""
kernel:
  description: Release of the running kernel.
  returned: success
  type: str
  sample: 6.1.0-56-amd64
modules:
  description: One entry per listed module, in the order given.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: The name as given in the task.
      type: str
      sample: nf_conntrack_ipv4
    resolved:
      description: The kernel's name for it (aliases and renames resolved, C(-) as C(_)).
      type: str
      sample: nf_conntrack
    resolved_by:
      description: Why O(name) and RV(modules[].resolved) differ, or null when they do not.
      type: str
      sample: nf_conntrack_ipv4 was merged into nf_conntrack in Linux 4.19
    state:
      description: The state asked for.
      type: str
      sample: present
    before:
      description: V(loaded), V(builtin) or V(absent) before the task.
      type: str
      sample: absent
    after:
      description: V(loaded), V(builtin) or V(absent) after the task (predicted in check mode).
      type: str
      sample: loaded
    builtin:
      description: Whether the module is built into the kernel.
      type: bool
      sample: false
    builtin_source:
      description: Where the kernel says the module is built in (C(modules.builtin), C(/sys/module), the kernel config), or null.
      type: str
      sample: /lib/modules/6.1.0-56-amd64/modules.builtin
    params:
      description: The requested parameters with the values read from C(/sys/module/NAME/parameters) where shown.
      type: dict
      sample: {redirect_dir: "Y"}
    persistent:
      description: The persistence asked for, or null when left alone.
      type: str
      sample: present
    files:
      description: The collection's files that name this module after the task.
      type: list
      elements: str
      sample: [/etc/modules-load.d/kubenode-dataplane.conf]
    action:
      description: V(load), V(unload), V(reload) or V(none).
      type: str
      sample: load
plan:
  description: The kernel changes, in the order they run (all of them done, or planned in check mode).
  returned: success
  type: dict
  contains:
    unload:
      description: Modules unloaded with one C(rmmod), holders first; includes the modules to reload.
      type: list
      elements: str
      sample: [ip_vs_rr, ip_vs]
    load:
      description: Modules loaded, dependencies first; includes the modules to reload.
      type: list
      elements: str
      sample: [ip_vs, ip_vs_rr]
    reload:
      description: Modules unloaded and loaded again to change their parameters.
      type: list
      elements: str
      sample: [overlay]
    dependencies:
      description: Other modules that C(modprobe -n -v) said would be loaded with them.
      type: list
      elements: str
      sample: [nf_defrag_ipv4, nf_defrag_ipv6, libcrc32c]
files:
  description: Paths of the collection's persistence files for O(prefix).
  returned: success
  type: dict
  contains:
    modules_load:
      description: The modules-load.d file.
      type: str
      sample: /etc/modules-load.d/kubenode-dataplane.conf
    modprobe:
      description: The modprobe.d file.
      type: str
      sample: /etc/modprobe.d/kubenode-dataplane.conf
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import run_module
from ansible_collections.kubenode.dataplane.plugins.module_utils._kmod import DEFAULT_PREFIX, KmodBackend

ENTRY = dict(
    name=dict(type="str", required=True),
    state=dict(type="str", choices=["present", "absent"]),
    params=dict(type="dict"),
    persistent=dict(type="str", choices=["present", "absent", "disabled"]),
    reload=dict(type="bool"),
    ignore_builtin=dict(type="bool"),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="list", elements="str", aliases=["names"]),
            modules=dict(type="list", elements="dict", options=ENTRY),
            state=dict(type="str", choices=["present", "absent"]),
            params=dict(type="dict"),
            persistent=dict(type="str", choices=["present", "absent", "disabled"]),
            reload=dict(type="bool", default=False),
            ignore_builtin=dict(type="bool", default=False),
            prefix=dict(type="str", default=DEFAULT_PREFIX),
        ),
        required_one_of=[("name", "modules")],
        supports_check_mode=True,
    )
    run_module(module, KmodBackend)


if __name__ == "__main__":
    main()
