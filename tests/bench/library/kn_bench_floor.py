# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmarks only, never shipped: what any Ansible module pays before and after its own work.

It takes the same arguments as the module it stands next to (ipvs_services' services, or
iptables_ruleset's chains and options; the lists of dicts not checked further) and exits at once
with an empty result. Timed on the node
like the module, its run is AnsiballZ's unpacking, Python's start, Ansible's imports, reading and
copying the arguments, and writing the result with the arguments echoed back (``invocation``).
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "services": {"type": "list", "elements": "dict", "default": []},
            "chains": {"type": "list", "elements": "dict", "default": []},
            "backend": {"type": "str"},
            "canonical_cache": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    module.exit_json(changed=False)


if __name__ == "__main__":
    main()
