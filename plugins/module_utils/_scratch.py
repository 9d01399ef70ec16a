# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Scratch network namespaces: where a wanted ruleset is loaded so that the kernel and the tool settle its form.

nft_ruleset and iptables_ruleset compare the wanted state with the live one in the words the tool prints
back (``nft list table``, ``iptables-save``). Those words are learnt, not predicted: the wanted state is
loaded into an empty network namespace of our own with the same program and kernel, and read back there.
Nothing in the node's own namespaces is touched.

- ``run_once`` runs one command in a namespace that lives only as long as the command (``unshare --net``);
- ``Scratch`` is a named namespace (``ip netns add``) for several commands in a row and stand-in
  interfaces, removed on leaving; namespaces of runs killed before their cleanup are removed by the next run.

Making a namespace needs CAP_SYS_ADMIN. Where it is refused (an unprivileged container), ScratchUnavailable
says so, and the caller decides what to do without one.
"""

from __future__ import annotations

import os
import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError, Result, Runner

SCRATCH_PREFIX = "kubenode-scratch-"
NETNS_DIR = "/run/netns"


class ScratchUnavailable(DataplaneError):
    """No scratch network namespace can be made on this host (the message says why)."""


def _refused(res: Result, what: str) -> ScratchUnavailable:
    detail = (res.err or res.out).strip().splitlines()
    return ScratchUnavailable(f"{what} was refused ({detail[0] if detail else f'exit status {res.rc}'})")


def run_once(runner: Runner, argv: t.Sequence[str], data: t.Optional[str] = None, what: str = "") -> Result:
    """``argv`` in a network namespace of its own, gone when it exits; any exit status comes back."""
    unshare = runner.which("unshare")
    res = runner.run([unshare, "--net", "--"] + list(argv), data=data, ok_rc=range(256), what=what)
    if res.rc != 0 and res.err.startswith("unshare:"):
        raise _refused(res, "a scratch network namespace (unshare --net)")
    return res


class Scratch:
    """A named scratch network namespace, for use in a ``with`` block."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.name = f"{SCRATCH_PREFIX}{os.getpid()}-{os.urandom(3).hex()}"
        self._ip = ""
        self._links = 0

    def __enter__(self) -> "Scratch":
        ip = self.runner.which("ip", required=False)
        if not ip:
            raise ScratchUnavailable("a scratch network namespace needs iproute2's ip, which is not installed")
        self._ip = ip
        self.reap()
        res = self.runner.run([self._ip, "netns", "add", self.name], ok_rc=range(256),
                              what="creating a scratch network namespace")
        if res.rc != 0:
            self.__exit__()  # ip netns add can leave the name behind when the mount is refused
            raise _refused(res, "a scratch network namespace (ip netns add)")
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.runner.run([self._ip, "netns", "del", self.name], ok_rc=range(256),
                        what="removing the scratch network namespace")

    def argv(self, argv: t.Sequence[str]) -> t.List[str]:
        """``argv`` as run inside the namespace."""
        return [self._ip, "netns", "exec", self.name] + list(argv)

    def run(self, argv: t.Sequence[str], **kwargs: t.Any) -> Result:
        return self.runner.run(self.argv(argv), **kwargs)

    def stand_in(self, interface: str, index: t.Optional[int] = None, peer_index: t.Optional[int] = None) -> None:
        """An interface of that name (one end of a veth pair), for rules that resolve it when loaded; with
        ``index`` (and ``peer_index`` for the other end), the interface index it takes."""
        peer = f"knpeer{self._links}"
        self._links += 1
        end = ["index", str(index)] if index is not None else []
        other = ["index", str(peer_index)] if peer_index is not None else []
        argv = [self._ip, "-n", self.name, "link", "add", interface] + end + ["type", "veth", "peer", "name", peer]
        self.runner.run(argv + other,
                        what=f"creating a stand-in for interface {interface} in the scratch namespace")

    def reap(self) -> None:
        """Remove the scratch namespaces of runs that were killed before their cleanup."""
        try:
            names = os.listdir(NETNS_DIR)
        except OSError:
            return
        for name in names:
            if name.startswith(SCRATCH_PREFIX):
                pid = name[len(SCRATCH_PREFIX):].split("-", 1)[0]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    self.runner.run([self._ip, "netns", "del", name], ok_rc=range(256),
                                    what="removing a stale scratch namespace")
