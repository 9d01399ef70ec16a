# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel parameters: live values under /proc/sys and one owned file under /etc/sysctl.d.

The collection owns exactly one file (default /etc/sysctl.d/90-kubenode-dataplane.conf) and the
live values of the keys it is given; other files in /etc/sysctl.d are never read or edited.
"""

from __future__ import annotations

import os
import tempfile
import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils._converge import Backend
from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError

PROC_SYS = "/proc/sys"
HEADER = "# Managed by kubenode.dataplane.sysctls: edits are overwritten. Other files here are not touched.\n"


def normalise_value(value: t.Any) -> str:
    """sysctl prints multi-value keys tab-separated; users write them with spaces."""
    if isinstance(value, bool):
        value = int(value)
    return " ".join(str(value).split())


def key_path(key: str, root: str = PROC_SYS) -> str:
    # net.ipv4.conf.eth0/1.rp_filter style keys (a '/' in an interface name) are written with '/'
    # in place of '.' in sysctl.conf; map '.' to '/' and a literal '/' back to '.'
    parts = key.replace("/", "\0").split(".")
    return os.path.join(root, *[p.replace("\0", ".") for p in parts])


def render_file(settings: t.Mapping[str, str]) -> str:
    return HEADER + "".join(f"{k} = {settings[k]}\n" for k in sorted(settings))


def parse_file(text: str) -> t.Dict[str, str]:
    out: t.Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _sep, value = line.partition("=")
        out[key.strip().lstrip("-")] = normalise_value(value)
    return out


class SysctlBackend(Backend):
    def __init__(self, module: t.Any, root: str = PROC_SYS) -> None:
        self.module = module
        self.root = root
        p = module.params
        self.path: str = p["path"]
        self.state: str = p["state"]
        self.persist: bool = p["persist"]
        self.settings = {k: normalise_value(v) for k, v in (p["settings"] or {}).items()}

    def _read_live(self, key: str) -> t.Optional[str]:
        try:
            with open(key_path(key, self.root)) as f:
                return normalise_value(f.read())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DataplaneError(f"settings.{key}: cannot read {key_path(key, self.root)}: {exc.strerror}; nothing was changed") from None

    def current(self) -> t.Dict[str, t.Any]:
        live = {k: self._read_live(k) for k in sorted(self.settings)}
        try:
            with open(self.path) as f:
                content: t.Optional[str] = f.read()
        except FileNotFoundError:
            content = None
        return {"live": live, "file": content}

    def desired(self, before: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
        if self.state == "absent":
            # the owned file goes; live values are left as they are (a running node keeps working)
            return {"live": dict(before["live"]), "file": None}
        missing = [k for k, v in before["live"].items() if v is None]
        if missing and self.module.check_mode:
            # in a check-mode run the kernel module that provides a key (br_netfilter) was not really
            # loaded by an earlier task: say so, and report the key as one that would be set
            self.module.warn(
                "check mode: " + ", ".join(missing) + " not present yet; they would be set once the kernel "
                "module that provides them is loaded"
            )
        elif missing:
            raise DataplaneError(
                "settings: " + ", ".join(f"'{k}'" for k in missing)
                + f" not found under {self.root} (is the kernel module that provides it loaded, e.g. br_netfilter"
                " for net.bridge.*?); nothing was changed"
            )
        return {
            "live": dict(self.settings),
            "file": render_file(self.settings) if self.persist else before["file"],
        }

    def validate(self, after: t.Dict[str, t.Any]) -> None:
        for key in after["live"]:
            path = key_path(key, self.root)
            if not os.path.exists(path) and self.module.check_mode:
                continue
            if not os.access(path, os.W_OK):
                raise DataplaneError(f"settings.{key}: {path} is not writable here; nothing was changed")

    def apply(self, before: t.Dict[str, t.Any], after: t.Dict[str, t.Any]) -> None:
        if after["file"] != before["file"]:
            if after["file"] is None:
                os.unlink(self.path)
            else:
                directory = os.path.dirname(self.path) or "."
                os.makedirs(directory, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kubenode-sysctl-")
                with os.fdopen(fd, "w") as f:
                    f.write(after["file"])
                os.chmod(tmp, 0o644)
                self.module.atomic_move(tmp, self.path)
        done: t.List[str] = []
        for key, value in sorted(after["live"].items()):
            if before["live"].get(key) == value:
                continue
            try:
                self._write_live(key, value)
                done.append(key)
            except OSError as exc:
                # put back what this task already changed, so nothing is left half-applied
                for prev in done:
                    self._write_live(prev, before["live"][prev])
                raise DataplaneError(
                    f"settings.{key}: the kernel refused '{value}' ({exc.strerror}); "
                    "the live values were restored"
                ) from None

    def _write_live(self, key: str, value: str) -> None:
        with open(key_path(key, self.root), "w") as f:
            f.write(value)

    def render(self, state: t.Dict[str, t.Any]) -> str:
        live = "".join(f"{k} = {v if v is not None else '(absent)'}\n" for k, v in sorted(state["live"].items()))
        return f"# live values\n{live}# {self.path}\n{state['file'] if state['file'] is not None else '(absent)'}\n"

    def result(self, before: t.Dict[str, t.Any], after: t.Dict[str, t.Any], changed: bool) -> t.Dict[str, t.Any]:
        return {
            "path": self.path,
            "settings": after["live"],
            "changed_keys": sorted(k for k in after["live"] if before["live"].get(k) != after["live"][k]),
        }
