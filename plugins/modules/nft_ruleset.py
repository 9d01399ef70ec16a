#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: nft_ruleset
short_description: Own nftables tables declaratively, atomically, and with commit-confirmed rollback
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - Makes a list of nftables tables exactly as described, in one C(nft -f) transaction, and leaves every other
    table of the host byte-identical (kube-proxy's, Calico's, Docker's, the C(ip filter) and C(ip nat) tables of
    iptables-nft). It never runs C(flush ruleset).
  - The input is nft's own language (O(content), or a template with O(src)), or structured data (O(ruleset)) that is
    checked on the controller against a JSON Schema (U(https://github.com/kubenode/dataplane/blob/main/docs/schemas/nft_ruleset.schema.json))
    with every error reported at once with its JSON path.
  - Idempotent in the kernel's own terms. The current tables are read with C(nft list table); the desired script is
    loaded into a throw-away network namespace and listed there, so both sides are printed by the kernel and nft.
    Formatting, element order, defaults, handles and counter values never cause a change, and when nothing differs
    nothing is written (counters and set contents survive).
    The kernel's form of a script is remembered in C(/var/cache/kubenode-dataplane/nft), see O(canonical_cache).
  - Invalid input fails with nft's message and the line of the input, and nothing changes. In check mode, and before a
    rollback is armed (O(confirm_timeout)), the transaction is dry-run with C(nft -c). Otherwise C(nft -f) is its own
    dry run. The kernel checks the whole transaction before it commits any of it, so a separate C(nft -c) would only
    double the time of an apply.
  - After an apply the owned tables are read back and compared with the desired ones; a difference fails the task.
    When the same script was already applied and read back on this machine (it is in the canonical cache), the
    kernel's nf_tables generation is read instead of the whole tables. It goes up by one per committed transaction,
    so "one more than before" proves that this task's transaction, and no other, was committed. Any other value
    means the tables are read back in full. See RV(verified).
  - With O(confirm_timeout), the previous tables come back by themselves after that many seconds unless a later task
    confirms with O(confirm=true). This holds when the new rules cut the connection Ansible uses.
  - Requires C(nft) and C(unshare) (util-linux) on the managed node, C(ip) (iproute2) when the input names interfaces,
    and root (the scratch namespace needs C(CAP_SYS_ADMIN)). The controller needs the C(jsonschema) Python library for O(ruleset).
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.STATEFUL
attributes:
  check_mode:
    details:
      - The input is loaded into a scratch network namespace and the transaction is checked with C(nft -c), so
        invalid input fails in check mode as it would in a real run. Nothing on the host changes.
  diff_mode:
    details:
      - A unified diff of the owned tables as C(nft list table) prints them (counter values zeroed), plus the
        persisted files when O(persist=true).
  idempotent:
    details:
      - When the owned tables already are as desired, nothing is written to the kernel or to disk.
options:
  tables:
    description:
      - The tables the task owns, each written as C(<family> <name>), for example V(inet kubenode_firewall).
      - With O(content), O(src) or O(ruleset) it defaults to the tables the input names. When given, the input may
        name no other table, and must define every listed table.
      - Required with O(state=absent) and with O(confirm=true).
    type: list
    elements: str
  content:
    description:
      - The owned tables in nft's own language, as C(nft -f) reads it (C(define) is fine, C(include) is not).
      - Only commands on the owned tables are accepted; C(flush ruleset) is refused.
      - Mutually exclusive with O(src) and O(ruleset).
    type: str
  src:
    description:
      - Path of a Jinja2 template of the nft script, looked up like M(ansible.builtin.template) does (C(templates/)
        of the role or playbook). Templated on the controller and used as O(content).
      - Mutually exclusive with O(content) and O(ruleset).
    type: path
  ruleset:
    description:
      - The owned tables as data, rendered to one nft script. Validated on the controller against the JSON Schema
        C(docs/schemas/nft_ruleset.schema.json); every error is reported at once with its JSON path.
      - Mutually exclusive with O(content) and O(src).
    type: list
    elements: dict
    suboptions:
      family:
        description: The table's family.
        type: str
        required: true
        choices: [ip, ip6, inet, arp, bridge, netdev]
      name:
        description: The table's name.
        type: str
        required: true
      comment:
        description: The table's comment.
        type: str
      sets:
        description:
          - Named sets, each with C(name), C(type) (for example V(ipv4_addr)) or C(typeof) (for example V(ip saddr)),
            and optionally C(flags) (C(constant), C(interval), C(timeout), C(dynamic)), C(timeout), C(size),
            C(policy), C(auto_merge), C(comment) and C(elements).
        type: list
        elements: dict
      maps:
        description:
          - Named maps, as O(ruleset[].sets) plus C(value), the value type. With C(value=verdict) it is a verdict map.
            C(elements) is a list of C(key)/C(value) pairs.
        type: list
        elements: dict
      counters:
        description: Named counters, each with C(name) and optionally C(comment).
        type: list
        elements: dict
      chains:
        description:
          - Chains, each with C(name); base chains add C(type) (V(filter), V(nat), V(route)), C(hook), C(priority)
            (a number or a name like V(filter) or V(dstnat - 10)), optionally C(policy) and, for C(netdev), C(device).
          - C(rules) is a list of rules in nft's statement language (V(tcp dport 22 accept)), or of C(rule)/C(comment) pairs.
        type: list
        elements: dict
  state:
    description:
      - V(present) makes the owned tables exactly as described; V(absent) deletes them (and their persisted files).
    type: str
    choices: [present, absent]
    default: present
  force:
    description:
      - Tables that other programs own on Kubernetes nodes are refused unless this is V(true) - by name (C(kube-proxy),
        C(calico), C(firewalld), C(docker), C(docker-bridges), and C(filter), C(nat), C(mangle), C(raw), C(security),
        C(broute) outside the C(inet) and C(netdev) families) and any table nft reports as managed by iptables-nft.
    type: bool
    default: false
  persist:
    description:
      - Also make the owned tables survive a reboot. Each is written atomically to its own file
        O(persist_dir)/C(kubenode-<family>-<name>.nft), which replaces that one table when loaded.
      - O(persist_conf) is made to include those files at its end, keeping its other content. Each top-level
        C(flush ruleset) in it (Debian's stock file starts with one) is replaced by a managed block that deletes, one by
        one, only the tables the file itself defines, so that loading it at boot or on C(systemctl reload nftables)
        never wipes kube-proxy's, Calico's or Docker's live tables.
      - With O(persist_service), C(nftables.service) is enabled, and a drop-in
        C(/etc/systemd/system/nftables.service.d/kubenode-dataplane.conf) removes the unit's C(ExecStop=nft flush ruleset),
        so that stopping or restarting the service does not wipe them either.
      - Every file is dry-run with C(nft -c) as boot would load it before it is moved into place.
      - With O(confirm_timeout), the files are written by the confirming task (give it O(persist=true) too), so that a
        reboot before the confirmation comes back to the last confirmed ruleset.
    type: bool
    default: false
  persist_dir:
    description: Directory of the owned tables' files.
    type: path
    default: /etc/nftables.d
  persist_conf:
    description: The file C(nftables.service) loads.
    type: path
    default: /etc/nftables.conf
  persist_service:
    description:
      - With O(persist=true), enable C(nftables.service) and install the drop-in that removes its flushing C(ExecStop=).
      - Set to V(false) where systemd does not manage nftables.
    type: bool
    default: true
  confirm_timeout:
    description:
      - Seconds after which the owned tables are restored to what they were before this task, unless a later task
        confirms with O(confirm=true) first.
      - The rollback is armed before the change and runs in a process of its own (moved into a transient systemd scope
        when systemd is PID 1), so it happens when the new rules cut the connection Ansible uses and the task never returns.
      - When a rollback of the same tables is already pending, the state it restores is kept (the last confirmed one)
        and only the timer restarts.
    type: int
  confirm:
    description:
      - Confirm the change of a previous task on O(tables) and cancel its rollback. Fails if the rollback already ran,
        saying so, since the unconfirmed rules are then not in force.
      - Use M(ansible.builtin.meta) C(reset_connection) before it, so that the confirmation proves that a new connection
        reaches the host, not only the one that was already open.
      - Mutually exclusive with O(content), O(src) and O(ruleset).
    type: bool
    default: false
  canonical_cache:
    description:
      - Remember the kernel's form of each script applied (keyed by the script, nft's version and the kernel) in
        C(/var/cache/kubenode-dataplane/nft), so that later runs compare without loading the script into a scratch
        namespace again. V(false) always loads it.
    type: bool
    default: true
notes:
  - The owned tables are replaced as a whole (C(delete table) and create, in one transaction) when they differ, so
    their counters and dynamic set contents start again; when they do not differ, nothing is touched.
  - Set elements added by the packet path to sets with the C(dynamic) flag, counter values, quota usage and element
    expiry times are not part of the comparison.
  - The order of sets, maps and chains within a table is not significant; the order of rules in a chain is.
seealso:
  - name: The node firewall guide
    description: The C(kubenode.dataplane.nftables) role, its data model, and how Debian's C(flush ruleset) is dealt with.
    link: https://github.com/kubenode/dataplane/blob/main/docs/guides/node-firewall.md
"""

EXAMPLES = r"""
- name: Own one table, written in nft's language
  kubenode.dataplane.nft_ruleset:
    content: |
      table inet web {
        chain input {
          type filter hook input priority filter; policy accept;
          tcp dport { 80, 443 } ct state new counter accept
        }
      }

- name: The same from a template, kept across reboots
  kubenode.dataplane.nft_ruleset:
    src: web.nft.j2
    tables: [inet web]
    persist: true

- name: Structured, with a set, a verdict map and a named counter
  kubenode.dataplane.nft_ruleset:
    ruleset:
      - family: inet
        name: edge
        sets:
          - name: blocked
            type: ipv4_addr
            flags: [interval]
            elements: [203.0.113.0/24]
        maps:
          - name: ports
            type: inet_service
            value: verdict
            elements:
              - {key: 22, value: accept}
              - {key: 8080, value: drop}
        counters:
          - name: dropped
        chains:
          - name: input
            type: filter
            hook: input
            priority: filter
            policy: accept
            rules:
              - ip saddr @blocked counter name dropped drop
              - tcp dport vmap @ports

- name: Apply rules that could lock us out; they go away by themselves after 60 seconds
  kubenode.dataplane.nft_ruleset:
    src: firewall.nft.j2
    tables: [inet kubenode_firewall]
    confirm_timeout: 60
    persist: true

- name: Prove that a new connection still gets through
  ansible.builtin.meta: reset_connection

- name: Keep them (and persist them now)
  kubenode.dataplane.nft_ruleset:
    tables: [inet kubenode_firewall]
    confirm: true
    persist: true

- name: Remove a table and its file
  kubenode.dataplane.nft_ruleset:
    tables: [inet web]
    state: absent
    persist: true
"""

RETURN = r"""
tables:
  description: The owned tables.
  returned: always
  type: list
  elements: str
  sample: [inet kubenode_firewall]
canonical_source:
  description:
    - Where the kernel's form of the desired script came from. V(cache) means an earlier run remembered it.
      V(scratch namespace) means it was loaded and listed in a throw-away network namespace. V(applied) means
      the owned tables did not exist, so there was nothing to compare and the form was read back from the
      kernel after the apply.
    - Null with O(state=absent) and O(confirm=true).
  returned: always
  type: str
  sample: cache
verified:
  description:
    - How the apply was verified. V(re-read) means the owned tables were listed again and compared with the desired
      ones. V(generation) means the kernel's nf_tables generation showed that exactly this task's transaction was
      committed, for a script already read back on this machine.
    - Null when nothing was applied (no change, check mode, O(confirm=true)).
  returned: success, except with O(confirm=true)
  type: str
  sample: generation
timings:
  description: Seconds spent in each step (read, cache, scratch, dry_run, apply), for performance work.
  returned: success, except with O(confirm=true)
  type: dict
  sample: {read: 0.012, cache: 0.004, dry_run: 0.02, apply: 0.021}
rollback:
  description: The rollback armed by O(confirm_timeout), or null when none was armed (nothing changed, or no timeout).
  returned: success, except with O(confirm=true)
  type: dict
  contains:
    deadline:
      description: When the rollback runs unless confirmed, in seconds since the epoch (null in check mode).
      type: float
    timeout:
      description: The O(confirm_timeout).
      type: int
    mechanism:
      description: V(systemd scope), V(detached process), or V(would be armed) in check mode.
      type: str
    unit:
      description: The transient systemd scope holding the rollback process, when there is one.
      type: str
    pid:
      description: The rollback process.
      type: int
  sample: {deadline: 1764068400.5, timeout: 60, mechanism: systemd scope, unit: kubenode-rollback-4242.scope, pid: 4242}
persisted:
  description: Files written or removed (and V(systemd:nftables.service) when it was enabled).
  returned: always
  type: list
  elements: str
  sample: [/etc/nftables.conf, /etc/nftables.d/kubenode-inet-kubenode_firewall.nft]
persist_deferred:
  description: True when the files are left for the confirming task (O(persist=true) with O(confirm_timeout)).
  returned: success, except with O(confirm=true)
  type: bool
confirmed:
  description: With O(confirm=true), the pending rollbacks that were cancelled.
  returned: when O(confirm=true)
  type: list
  elements: dict
  sample: [{subject: [table inet kubenode_firewall], armed_at: 1764068340.5, deadline: 1764068400.5}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import run_module
from ansible_collections.kubenode.dataplane.plugins.module_utils._nft import NftBackend, confirm, options_from_params
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Runner

ARGUMENT_SPEC = dict(
    tables=dict(type="list", elements="str"),
    content=dict(type="str"),
    src=dict(type="path"),
    ruleset=dict(type="list", elements="dict", options=dict(
        family=dict(type="str", required=True, choices=["ip", "ip6", "inet", "arp", "bridge", "netdev"]),
        name=dict(type="str", required=True),
        comment=dict(type="str"),
        sets=dict(type="list", elements="dict"),
        maps=dict(type="list", elements="dict"),
        counters=dict(type="list", elements="dict"),
        chains=dict(type="list", elements="dict"),
    )),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    force=dict(type="bool", default=False),
    persist=dict(type="bool", default=False),
    persist_dir=dict(type="path", default="/etc/nftables.d"),
    persist_conf=dict(type="path", default="/etc/nftables.conf"),
    persist_service=dict(type="bool", default=True),
    confirm_timeout=dict(type="int"),
    confirm=dict(type="bool", default=False),
    canonical_cache=dict(type="bool", default=True),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
        mutually_exclusive=[("content", "src", "ruleset"), ("confirm", "content"), ("confirm", "ruleset"), ("confirm", "src")],
        required_if=[("state", "absent", ("tables",)), ("confirm", True, ("tables",))],
    )
    runner = Runner(module)
    try:
        opts = options_from_params(module.params)
        if module.params["confirm"]:
            module.exit_json(**confirm(module, runner, opts))
    except DataplaneError as exc:
        module.fail_json(msg=str(exc))
    run_module(module, lambda m: NftBackend(m, runner, opts))


if __name__ == "__main__":
    main()
