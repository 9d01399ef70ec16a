# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The names of the iptables world that every part of the iptables backend checks against: families,
tables and their built-in chains, the chain names the collection may own and the prefixes of chains
that belong to others.

Apart from the rule normaliser (_iptables_rules) so that a run whose rules the module has seen before
(their canonical form taken from the cache) does not load the normaliser on the node at all.
"""

from __future__ import annotations

import re
import typing as t

FAMILIES = ("ipv4", "ipv6")
TABLES: t.Dict[str, t.Tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
}
# chain names the collection may own: iptables allows 28 characters; the set is kept to what
# is also valid in a systemd unit name, which the persisted chains need
CHAIN_RE = re.compile(r"^[A-Za-z0-9_.-]{1,28}$")
# prefixes of chains that belong to kube-proxy, CNIs, Docker and host firewalls
FOREIGN_PREFIXES = ("KUBE-", "cali-", "DOCKER", "CILIUM_", "CILIUM-", "FLANNEL", "WEAVE", "ufw-", "ufw6-", "f2b-",
                    "FORWARD_", "INPUT_", "OUTPUT_", "PREROUTING_", "POSTROUTING_", "IN_", "FWD_", "LIBVIRT_",
                    "ANTREA", "KUBE_", "felix-")
