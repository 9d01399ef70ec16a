# -*- coding: utf-8 -*-
# Copyright (c) kubenode.dataplane contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The converge loop every stateful module of the collection runs.

read (current) -> compute (desired) -> compare -> dry run (validate) -> apply -> re-read and verify (verify).
Nothing is written when the state is already as desired, so counters, connections and timers
survive a no-op run. See docs/concepts.md and DESIGN.md.
"""

from __future__ import annotations

import typing as t

from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import DataplaneError


class VerifyError(DataplaneError):
    """The state read back after an apply is not the state that was applied."""


class Backend:
    """Interface of a subsystem backend. Subclasses implement the five steps.

    ``current`` and ``desired`` return values that compare with ``==`` after normalisation;
    ``render`` turns one into text a person can read in a diff.
    """

    def current(self) -> t.Any:
        raise NotImplementedError

    def desired(self, before: t.Any) -> t.Any:
        raise NotImplementedError

    def validate(self, after: t.Any) -> None:
        """Native dry run of ``after``; raises DataplaneError with the tool's message."""

    def apply(self, before: t.Any, after: t.Any) -> t.Any:
        """Make ``after`` real. Returns None, or the state really applied when the backend had to
        recompute it while applying (for example after an optimistic-concurrency conflict)."""
        raise NotImplementedError

    def verify(self, wanted: t.Any) -> None:
        """Re-read after an apply; raise VerifyError when the state read back is not ``wanted``.
        A backend may read less when the kernel can prove the outcome (nft's generation id)."""
        actual = self.current()
        if not self.equal(actual, wanted):
            raise VerifyError(self.mismatch(actual, wanted))

    def render(self, state: t.Any) -> str:
        return str(state)

    def equal(self, actual: t.Any, wanted: t.Any) -> bool:
        return actual == wanted

    def result(self, before: t.Any, after: t.Any, changed: bool) -> t.Dict[str, t.Any]:
        """Module-specific return values."""
        return {}

    def mismatch(self, actual: t.Any, wanted: t.Any) -> str:
        """The message of the error raised when the state read back differs from the one applied."""
        return (
            "the state read back after the change differs from the one applied; "
            f"wanted:\n{self.render(wanted)}\nfound:\n{self.render(actual)}"
        )


def converge(backend: Backend, check_mode: bool, diff: bool) -> t.Dict[str, t.Any]:
    before = backend.current()
    after = backend.desired(before)
    changed = not backend.equal(before, after)
    if changed:
        backend.validate(after)
        if not check_mode:
            applied = backend.apply(before, after)
            if applied is not None:
                after = applied
            backend.verify(after)
    result: t.Dict[str, t.Any] = {"changed": changed}
    result.update(backend.result(before, after, changed))
    if diff:
        result["diff"] = {"before": backend.render(before), "after": backend.render(after)}
    return result


def run_module(module: t.Any, make_backend: t.Callable[[t.Any], Backend]) -> None:
    """Build the backend, run the loop and exit the module; DataplaneError becomes fail_json."""
    try:
        backend = make_backend(module)
        result = converge(backend, module.check_mode, module._diff)
    except DataplaneError as exc:
        module.fail_json(msg=str(exc), **getattr(exc, "details", {}))
    module.exit_json(**result)
