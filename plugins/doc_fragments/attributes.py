# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled/queried by the module has not changed in a relevant way.
"""

    # Stateful modules of the collection: full check and diff support through the converge loop.
    STATEFUL = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - The native dry run (for example C(nft -c), C(iptables-restore --test), C(modprobe -n)) runs in check mode too,
        so invalid input fails in check mode as it would in a real run.
  diff_mode:
    support: full
  idempotent:
    support: full
    details:
      - When nothing differs, nothing is written to the kernel or to disk.
"""

    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify state.
  diff_mode:
    support: N/A
    details:
      - This action does not modify state.
  idempotent:
    support: full
"""
