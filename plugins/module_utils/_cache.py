# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small on-disk cache of "this input, on this machine, reads back from the kernel as this".

nft_ruleset keeps the kernel's form of a script; iptables_ruleset keeps the iptables-save form of a
chain's rules. An entry is stored only once a live kernel read it back that way (a no-op run that
found it, or the verifying re-read after an apply). Entries depend only on their key: the input,
the tool's version, the running kernel and CACHE_FORMAT (raised when the normalisers change), so
one cache serves every network namespace of a machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import time
import typing as t
import zlib

CACHE_FORMAT = "2"
CACHE_KEEP = 64


class CanonicalCache:
    """sha256(format, kernel, parts...) -> a JSON value, zlib-compressed, one file per entry."""

    def __init__(self, directory: str, enabled: bool = True, keep: int = CACHE_KEEP) -> None:
        self.directory = directory
        self.enabled = enabled
        self.keep = keep

    @staticmethod
    def key(*parts: t.Union[str, t.Sequence[str]]) -> str:
        h = hashlib.sha256()
        for part in (CACHE_FORMAT, os.uname().release) + parts:
            h.update((part if isinstance(part, str) else "\n".join(part)).encode())
            h.update(b"\0")
        return h.hexdigest()

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.json")

    def get(self, key: str) -> t.Any:
        if not self.enabled:
            return None
        try:
            with open(self._path(key), encoding="utf-8") as f:
                data = json.load(f)
            return json.loads(zlib.decompress(base64.b64decode(data["value"])).decode())
        except (OSError, ValueError, KeyError, zlib.error):
            return None

    def put(self, key: str, value: t.Any) -> None:
        if not self.enabled:
            return
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            blob = base64.b64encode(zlib.compress(json.dumps(value).encode(), 6)).decode()
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"value": blob, "stored": time.time()}, f)
            os.replace(tmp, self._path(key))
            entries = sorted(
                (os.path.join(self.directory, e) for e in os.listdir(self.directory) if e.endswith(".json")),
                key=lambda p: os.stat(p).st_mtime,
            )
            for old in entries[:-self.keep]:
                os.unlink(old)
        except OSError:
            pass  # a cache: a full or read-only disk only costs time
