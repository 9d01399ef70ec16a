"""The one runner: argv only, C locale, timeouts, typed errors — exercised with real programs."""

from __future__ import annotations

import pytest

from ansible_collections.kubenode.dataplane.plugins.module_utils._runner import (
    CommandError, CommandTimeout, Runner, ToolMissing,
)


def test_runs_argv_with_c_locale_and_records_history(make_module):
    runner = Runner(make_module())
    res = runner.run(["sh", "-c", 'printf "%s|%s" "$LC_ALL" "$1"', "sh", "a b; rm -rf /nonexistent"])
    # the argument with spaces and a semicolon arrives as one argv element: nothing is parsed by a shell
    assert res.out == "C|a b; rm -rf /nonexistent"
    assert runner.history == [["sh", "-c", 'printf "%s|%s" "$LC_ALL" "$1"', "sh", "a b; rm -rf /nonexistent"]]


def test_refuses_a_shell_string(make_module):
    with pytest.raises(TypeError):
        Runner(make_module()).run("echo hi")


def test_feeds_stdin(make_module):
    assert Runner(make_module()).run(["cat"], data="table inet x {}\n").out == "table inet x {}\n"


def test_unexpected_status_is_a_typed_error_with_the_tools_message(make_module):
    with pytest.raises(CommandError) as err:
        Runner(make_module()).run(["sh", "-c", "echo 'Error: syntax error' >&2; exit 3"], what="dry run")
    assert err.value.rc == 3
    assert str(err.value) == "dry run: 'sh -c echo 'Error: syntax error' >&2; exit 3' exited with status 3: Error: syntax error"


def test_accepted_status(make_module):
    assert Runner(make_module()).run(["sh", "-c", "exit 1"], ok_rc=(0, 1)).rc == 1


def test_timeout_kills_and_says_so(make_module):
    with pytest.raises(CommandTimeout) as err:
        Runner(make_module(), timeout=1).run(["sleep", "30"])
    assert "killed after 1 seconds" in str(err.value)


def test_missing_tool_is_named(make_module):
    with pytest.raises(ToolMissing) as err:
        Runner(make_module()).which("no-such-tool-kubenode")
    assert "'no-such-tool-kubenode' is not installed" in str(err.value)
