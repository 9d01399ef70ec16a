#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: iptables_ruleset
short_description: Own named iptables chains and the jumps into them, applied atomically per table
version_added: 0.1.0
author:
  - kubenode.dataplane maintainers (@kubenode)
description:
  - Makes named iptables chains (in the C(filter), C(nat), C(mangle), C(raw) and C(security) tables, for IPv4
    and IPv6)
    contain exactly the given rules, and makes exactly one rule in each named built-in chain jump to them
    at the stated position.
  - Everything else stays byte-identical. kube-proxy's C(KUBE-*) chains, Calico's C(cali-*) chains,
    Docker's C(DOCKER*) chains and rules that someone added by hand to the built-in chains are never
    flushed or rewritten. Each table is changed with one C(iptables-restore --noflush) run that only
    declares (and so empties) the owned chains, fills them, and deletes and inserts the jump rules.
  - The module compares the owned chains with what C(iptables-save) prints. The printed form of rules it has
    not seen before is learnt from the kernel, not predicted; the wanted chains, with the jumps from their
    built-in chains (so that a target's hooks are checked as in the real table) and empty stand-ins for the
    live chains of others, are restored into a scratch network namespace with the same iptables program and
    backend, and read back there with C(iptables-save). So every rule iptables accepts (defaults left out,
    service names, masks, several addresses, any extension) converges on the first run, and check mode
    predicts exactly what a real run does. Counters are ignored. When nothing differs, nothing is written, so
    the counters of the owned chains survive a run that changes nothing.
  - What is written is the rules as given (re-quoted for C(iptables-restore), which reads double quotes only),
    never a rewritten form. A rule iptables rejects fails with iptables' own message, the line and the rule it
    came from, before anything changes. In check mode, and before a change that spans several tables,
    C(iptables-restore --test) also checks the input against the live tables. A change of a single table needs
    no separate test, because that table's C(iptables-restore) commits all of its input or none of it.
  - Where no network namespace can be made (no C(CAP_SYS_ADMIN), as in an unprivileged container), the
    collection's normaliser predicts the printed form instead, with a warning (see RV(scratch_namespace)). A
    read-back that differs from the prediction in spelling only is then taken as the chain's form after the
    apply, so the run does not fail and the next run finds nothing to change; check mode may report a change
    that the real run does not make.
  - After the change the tables are read back and compared again. There is one exception, with the nft backend;
    when every owned chain's rules are in the module's cache (they were already printed back exactly this way
    on this machine), the module reads the kernel's nf_tables generation instead. It must have gone up by
    exactly the module's own restores, so no other writer came in between. See RV(verified).
  - Every iptables program is run with C(-w), so the module waits for the xtables lock instead of failing
    or (like a check-then-append loop) adding a rule twice.
  - Rules are given as iptables rule specs (C(-p tcp --dport 22 -j ACCEPT)) or as data (see
    O(chains[].rules)); the data form is checked against a JSON Schema on the controller
    (C(docs/schemas/iptables_ruleset.schema.json)) and every error is reported at once, with its JSON path.
  - The output of the C(kubenode.dataplane.node_firewall) filter with the C(iptables) backend can be passed
    as O(chains) as it is.
extends_documentation_fragment:
  - kubenode.dataplane.attributes
  - kubenode.dataplane.attributes.STATEFUL
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows the owned chains and their jump rules as rule text, before and after.
  idempotent:
    support: full
options:
  chains:
    description:
      - The chains this task owns. A chain not listed here is never changed, except that a jump rule into
        an owned chain from a built-in chain of its table is part of what this task owns.
      - Required unless O(confirm) is given.
    type: list
    elements: dict
    suboptions:
      chain:
        description:
          - Name of the chain (1 to 28 letters, digits, C(_), C(.) or C(-)).
          - Names that belong to kube-proxy (C(KUBE-)), Calico (C(cali-)), Docker (C(DOCKER)), Cilium, Flannel,
            Weave, ufw, fail2ban or firewalld are refused unless O(force=true).
        type: str
        required: true
      table:
        description: The table of the chain.
        type: str
        choices: [filter, nat, mangle, raw, security]
        default: filter
      ip_version:
        description: V(ipv4) uses iptables, V(ipv6) ip6tables.
        type: str
        choices: [ipv4, ipv6]
        default: ipv4
      rules:
        description:
          - The rules of the chain, in order. The chain is made to hold exactly these.
          - A rule spec is a string as you would type it after C(iptables -A CHAIN), split into words like a
            shell does (single or double quotes); a line copied from C(iptables-save) means what it meant there.
          - A rule as data is a dictionary with the keys C(protocol), C(source), C(destination), C(in_interface),
            C(out_interface) (each may start with C(!) to negate it), C(fragment), C(sport) and C(dport) (a port,
            a C(first:last) range or a service name; a list becomes a C(multiport) match), C(icmp_type),
            C(ctstate) (list), C(limit), C(limit_burst), C(matches) (further match words), C(comment), C(jump) or
            C(goto), and the target options C(reject_with), C(log_prefix), C(log_level), C(to_destination),
            C(to_source), C(to_ports), C(set_mark) and C(target_options) (further target words).
          - A spec with a list of addresses (C(-s 10.0.0.1,10.0.0.2)) makes one rule per address, as iptables does.
          - The rules can also be one text, one rule spec per line; blank lines and lines starting with C(#) are
            skipped, and errors name the line. For thousands of rules this is the fast form, because Ansible handles
            one string instead of a list of thousands, on the controller and on the host (see the performance page
            of the collection's docs). For example O(chains[].rules) set to
            C({{ lookup('ansible.builtin.file', 'allowlist.rules') }}).
        type: raw
        default: []
      jump_from:
        description:
          - Built-in chains of the table that jump to this chain, with exactly one rule each.
          - Jump rules into the chain from other built-in chains are removed.
        type: list
        elements: str
        default: []
      jump_position:
        description:
          - Where the jump rule sits in each O(chains[].jump_from) chain, counted among the rules of that chain;
            V(1) is the first, V(-1) the last. A position beyond the end means the end.
          - kube-proxy and Calico insert their own jumps at the top when they start; when they do so after
            this module, the next run moves the jump back once, and both are stable from then on.
        type: int
        default: 1
      jump_spec:
        description:
          - Further matches of the jump rule, for example C(-m comment --comment "node firewall") or C(-i eth0).
        type: str
        default: ''
      state:
        description: V(absent) removes the chain and the jump rules into it.
        type: str
        choices: [present, absent]
        default: present
  backend:
    description:
      - The iptables backend to write to.
      - V(auto) uses the one the node's rules live in, read like kubernetes-sigs/iptables-wrappers does;
        kubelet's C(KUBE-IPTABLES-HINT) or C(KUBE-KUBELET-CANARY) chain in the C(mangle) table decides,
        otherwise the backend that holds rules, otherwise the one the C(iptables) command selects. A node with
        rules in both backends gets a warning (see M(kubenode.dataplane.iptables_backend)).
    type: str
    choices: [auto, legacy, nft]
    default: auto
  wait:
    description: Seconds to wait for the xtables lock (C(iptables -w)).
    type: int
    default: 30
  force:
    description: Allow owning chains whose names belong to kube-proxy, a CNI, Docker or a host firewall.
    type: bool
    default: false
  canonical_cache:
    description:
      - Remember, in C(/var/cache/kubenode-dataplane/iptables), the form in which C(iptables-save) prints each owned
        chain's rules. The key is the rules as given, the iptables program and the kernel. An entry is stored only
        after C(iptables-save) printed the rules back that way. Later runs then skip the scratch namespace, which
        matters with tens of thousands of rules. V(false) learns the form again on every run (rules written
        exactly as the live chain prints them need no scratch namespace either way).
    type: bool
    default: true
  persist:
    description:
      - Also save the owned chains so that they come back at boot. Each chain gets a file
        C(<persist_dir>/<ip_version>-<table>-<chain>.rules) with only that chain and its jump rules, and a
        systemd unit C(kubenode-iptables-<ip_version>-<table>-<chain>.service) (enabled for
        C(multi-user.target), ordered before C(network-pre.target)) that loads it with
        C(iptables-restore --noflush).
      - Debian's C(netfilter-persistent) is not used on purpose, because C(netfilter-persistent save) saves
        whole tables, kube-proxy's and the CNI's dynamic rules included, and restores them at boot before
        kube-proxy, stale. See the iptables guide in the collection's docs.
      - At boot the built-in chains are nearly empty, so the jump goes first (positive O(chains[].jump_position))
        or last (negative); the next run of the module puts it at its exact position.
      - V(false) leaves files written by an earlier run alone; remove a chain with O(chains[].state=absent)
        and O(persist=true) to remove its files too.
    type: bool
    default: false
  persist_dir:
    description: Where the rules files go.
    type: path
    default: /etc/kubenode-dataplane/iptables
  unit_dir:
    description:
      - Where the systemd units go. C(systemctl daemon-reload) runs only for the default directory on a host
        where systemd is running; another directory (a test root, an image being built) is only written.
    type: path
    default: /etc/systemd/system
  confirm_timeout:
    description:
      - Anti-lockout. When the task changes something, the previous owned chains (and persisted files) are
        restored by the host itself after this many seconds unless the change is confirmed.
      - With O(auto_confirm=true) the action reconnects to the host (a new connection) right after the change
        and confirms; when the new rules cut the connection Ansible uses, that fails, the task fails, and the
        host puts the previous chains back by itself.
      - Make it longer than the time a new connection takes. V(0) disables it.
    type: int
    default: 0
  auto_confirm:
    description:
      - With O(confirm_timeout), confirm by reconnecting within this task. V(false) leaves the rollback pending;
        confirm it in a later task with O(confirm) set to RV(rollback.token), after checking what you need to.
    type: bool
    default: true
  confirm:
    description:
      - Confirm a pending rollback (RV(rollback.token) of an earlier task), so the applied chains stay. Nothing
        else is done; the other options are ignored.
    type: str
notes:
  - The controller needs the C(jsonschema) Python library when rules are given as data.
  - The O(chains) list of C(kubenode.dataplane.node_firewall('iptables')) names the chain
    C(KUBENODE-FIREWALL) in the filter table for both IP versions, jumped to first from C(INPUT).
seealso:
  - module: kubenode.dataplane.iptables_backend
  - module: kubenode.dataplane.nft_ruleset
  - module: community.general.iptables_state
    description: Restores whole tables, flushing what the play does not own.
"""

EXAMPLES = r"""
- name: A firewall chain jumped to first from INPUT, rules as specs
  kubenode.dataplane.iptables_ruleset:
    chains:
      - chain: KUBENODE-FIREWALL
        jump_from: [INPUT]
        jump_position: 1
        rules:
          - -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
          - -i lo -j ACCEPT
          - -p tcp --dport ssh -s 192.0.2.0/24 -j ACCEPT
          - -p tcp --dport 10250 -m comment --comment kubelet -j ACCEPT
          - -j DROP

- name: The same for IPv6, rules as data, with anti-lockout
  kubenode.dataplane.iptables_ruleset:
    confirm_timeout: 30
    chains:
      - chain: KUBENODE-FIREWALL
        ip_version: ipv6
        jump_from: INPUT
        rules:
          - {ctstate: [RELATED, ESTABLISHED], jump: ACCEPT}
          - {in_interface: lo, jump: ACCEPT}
          - {protocol: ipv6-icmp, jump: ACCEPT}
          - {protocol: tcp, dport: 22, source: "2001:db8::/64", comment: ssh, jump: ACCEPT}
          - {protocol: udp, dport: [4789, "51820:51821"], jump: ACCEPT}
          - {jump: DROP}

- name: Thousands of allow rules kept in a file next to the playbook, one rule spec per line
  kubenode.dataplane.iptables_ruleset:
    chains:
      - chain: KUBENODE-ALLOW
        jump_from: [INPUT]
        rules: "{{ lookup('ansible.builtin.file', 'files/allowlist.rules') }}"

- name: The node firewall model of the kubenode.dataplane.iptables role, persisted
  kubenode.dataplane.iptables_ruleset:
    chains: "{{ {'node_role': 'worker', 'cluster_cidrs': ['10.0.0.0/16']} | kubenode.dataplane.node_firewall('iptables') }}"
    persist: true

- name: A DNAT chain in nat, jumped to from PREROUTING and OUTPUT
  kubenode.dataplane.iptables_ruleset:
    backend: nft
    chains:
      - chain: KUBENODE-DNAT
        table: nat
        jump_from: [PREROUTING, OUTPUT]
        jump_spec: -m addrtype --dst-type LOCAL
        rules:
          - -p tcp --dport 8443 -j DNAT --to-destination 10.0.0.10:443

- name: Apply, check something yourself, then confirm
  kubenode.dataplane.iptables_ruleset:
    confirm_timeout: 60
    auto_confirm: false
    chains:
      - chain: KUBENODE-SSH
        jump_from: INPUT
        rules: ["-p tcp --dport 22 -j ACCEPT"]
  register: fw

- name: Check that the API server still answers
  ansible.builtin.uri:
    url: https://{{ inventory_hostname }}:6443/healthz
    validate_certs: false

- name: Keep the new chains
  kubenode.dataplane.iptables_ruleset:
    confirm: "{{ fw.rollback.token }}"
  when: fw.rollback is defined

- name: Remove a chain and its jumps
  kubenode.dataplane.iptables_ruleset:
    chains:
      - chain: KUBENODE-OLD
        state: absent
"""

RETURN = r"""
backend:
  description: The backend written to.
  returned: always, unless O(confirm) was given
  type: str
  sample: nft
backend_reason:
  description: Why that backend.
  returned: always, unless O(confirm) was given
  type: str
  sample: kubelet's KUBE-IPTABLES-HINT chain is in the nft backend
mixed_backends:
  description: Whether both backends hold rules (with O(backend=auto)).
  returned: always, unless O(confirm) was given
  type: bool
verified:
  description:
    - How the change was verified. V(re-read) means the tables were read back with C(iptables-save) and compared.
      V(generation) means the nf_tables generation showed that only the module's own restores were committed,
      for rules already printed back this way on this machine.
    - Null when nothing was written.
  returned: always, unless O(confirm) was given
  type: str
  sample: re-read
chains:
  description: Per owned chain, what it holds now and whether it (or its jump rules) changed.
  returned: always, unless O(confirm) was given
  type: list
  elements: dict
  contains:
    canonical_source:
      description:
        - Where the form in which C(iptables-save) prints the chain's rules came from. V(cache) (printed back this
          way on an earlier run), V(live) (the rules are written as the live chain prints them), V(scratch
          namespace) (learnt in one on this run) or V(normaliser) (predicted, where no scratch namespace can be
          made). Null for O(chains[].state=absent).
      type: str
  sample:
    - {ip_version: ipv4, table: filter, chain: KUBENODE-FIREWALL, state: present, rules: 12, changed: true,
       canonical_source: scratch namespace}
scratch_namespace:
  description:
    - V(used) when the printed form of new rules was learnt in a scratch network namespace, V(not needed) when
      every chain's form was known without one, or why none could be made (the normaliser predicted then).
  returned: always, unless O(confirm) was given
  type: str
  sample: used
persisted:
  description: The files that hold the owned chains for the next boot.
  returned: when O(persist=true)
  type: list
  elements: str
rollback:
  description: The pending anti-lockout rollback, or the confirmation of one.
  returned: when O(confirm_timeout) is set and something changed, or when O(confirm) is given
  type: dict
  contains:
    token:
      description: Identifies the rollback; pass it to O(confirm).
      type: str
      sample: 3f2a9c0d1e4b5a69
    timeout:
      description: Seconds after the change at which the previous chains come back unless confirmed.
      type: int
    deadline:
      description: That moment, in seconds since the epoch.
      type: float
    confirmed:
      description: Whether the rollback was cancelled (the new chains stay).
      type: bool
    pid:
      description: Process id of the rollback watcher on the host.
      type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import run_module
from ansible_collections.kubenode.dataplane.plugins.module_utils._iptables import IptablesError, NetnsLock, Ruleset, confirm
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import Runner

CHAIN_OPTIONS = dict(
    chain=dict(type="str", required=True),
    table=dict(type="str", choices=["filter", "nat", "mangle", "raw", "security"], default="filter"),
    ip_version=dict(type="str", choices=["ipv4", "ipv6"], default="ipv4"),
    rules=dict(type="raw", default=[]),
    jump_from=dict(type="list", elements="str", default=[]),
    jump_position=dict(type="int", default=1),
    jump_spec=dict(type="str", default=""),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            chains=dict(type="list", elements="dict", options=CHAIN_OPTIONS),
            backend=dict(type="str", choices=["auto", "legacy", "nft"], default="auto"),
            wait=dict(type="int", default=30),
            force=dict(type="bool", default=False),
            canonical_cache=dict(type="bool", default=True),
            persist=dict(type="bool", default=False),
            persist_dir=dict(type="path", default="/etc/kubenode-dataplane/iptables"),
            unit_dir=dict(type="path", default="/etc/systemd/system"),
            confirm_timeout=dict(type="int", default=0),
            auto_confirm=dict(type="bool", default=True),
            confirm=dict(type="str"),
        ),
        required_one_of=[("chains", "confirm")],
        supports_check_mode=True,
    )
    if module.params["confirm"]:
        if module.check_mode:
            module.exit_json(changed=True, rollback={"token": module.params["confirm"], "confirmed": False})
        try:
            module.exit_json(changed=True, rollback=confirm(module.params["confirm"]))
        except IptablesError as exc:
            module.fail_json(msg=str(exc))
    try:
        # run_module turns every other error into fail_json: what arrives here is the lock's
        with NetnsLock(module.params["wait"]):
            run_module(module, lambda m: Ruleset(m, Runner(m), m.params))
    except IptablesError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
