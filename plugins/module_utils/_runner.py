# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one place in the collection that runs a program.

Every command is an argv list (never a shell string), runs with LC_ALL=C so that the output
we parse is stable, is bounded by a timeout, and failures come back as typed exceptions that
carry the argv and the tool's own message.
"""

from __future__ import annotations

import typing as t

from dataclasses import dataclass, field

LOCALE_ENV = {"LC_ALL": "C", "LANG": "C", "LANGUAGE": "C"}
DEFAULT_TIMEOUT = 120
# exit status of coreutils timeout(1) when the command ran too long
TIMEOUT_RC = 124


class DataplaneError(Exception):
    """Base class: the message is one sentence meant for the person running the play."""


class CommandError(DataplaneError):
    """A program exited with an unexpected status."""

    def __init__(self, argv: t.Sequence[str], rc: int, out: str, err: str, what: str = "") -> None:
        self.argv = list(argv)
        self.rc = rc
        self.out = out
        self.err = err
        detail = (err or out).strip()
        prefix = f"{what}: " if what else ""
        msg = f"{prefix}'{' '.join(self.argv)}' exited with status {rc}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)


class CommandTimeout(CommandError):
    """A program did not finish in time and was killed."""


class ToolMissing(DataplaneError):
    """A required program is not installed on the managed node."""


@dataclass
class Result:
    argv: t.List[str]
    rc: int
    out: str
    err: str


@dataclass
class Runner:
    """Runs argv lists through AnsibleModule.run_command.

    ``module`` only needs ``run_command`` and ``get_bin_path``, so tests and benchmarks can
    pass a small object that records or really executes the commands.
    """

    module: t.Any
    timeout: int = DEFAULT_TIMEOUT
    history: t.List[t.List[str]] = field(default_factory=list)
    _bins: t.Dict[str, str] = field(default_factory=dict)

    def which(self, name: str, required: bool = True) -> t.Optional[str]:
        if name not in self._bins:
            path = self.module.get_bin_path(name, required=False, opt_dirs=["/usr/sbin", "/sbin"])
            if not path:
                if required:
                    raise ToolMissing(f"the program '{name}' is not installed on this host; nothing was changed")
                return None
            self._bins[name] = path
        return self._bins[name]

    def run(
        self,
        argv: t.Sequence[str],
        *,
        data: t.Optional[str] = None,
        ok_rc: t.Collection[int] = (0,),
        timeout: t.Optional[int] = None,
        what: str = "",
    ) -> Result:
        if isinstance(argv, (str, bytes)):
            raise TypeError("Runner.run takes an argv list, never a shell string")
        argv = [str(a) for a in argv]
        self.history.append(list(argv))
        limit = self.timeout if timeout is None else timeout
        full = argv
        timeout_bin = self.which("timeout", required=False) if limit else None
        if timeout_bin:
            full = [timeout_bin, "--kill-after=5", str(limit)] + argv
        rc, out, err = self.module.run_command(
            full,
            data=data,
            binary_data=data is not None,
            environ_update=dict(LOCALE_ENV),
            check_rc=False,
            expand_user_and_vars=False,
        )
        if timeout_bin and rc == TIMEOUT_RC and TIMEOUT_RC not in ok_rc:
            raise CommandTimeout(argv, rc, out, f"killed after {limit} seconds", what)
        if rc not in ok_rc:
            raise CommandError(argv, rc, out, err, what)
        return Result(argv, rc, out, err)
