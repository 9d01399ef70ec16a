# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The files that load kernel modules at boot, read the same way by kernel_module and dataplane_info."""

from __future__ import annotations

import typing as t


def parse_modules_load(text: t.Optional[str]) -> t.List[str]:
    """Module names of a modules-load.d(5) file or of Debian's /etc/modules, in order, each once.

    '#' and ';' start comment lines; only a line's first word is the name (/etc/modules allows
    parameters after it); '-' is read as '_', as the kernel does.
    """
    names: t.List[str] = []
    for line in (text or "").splitlines():
        words = line.split()
        if words and words[0][0] not in "#;":
            name = words[0].replace("-", "_")
            if name not in names:
                names.append(name)
    return names
