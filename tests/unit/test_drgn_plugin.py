"""The drgn plugin maps every ``MmrwatchError`` as the CLI does (issue 17 item 1): one
``CommandError`` line, and the kind and exit code of ``agent/exits.py`` on it."""
import argparse

import pytest
from drgn.commands import CommandArgumentError, CommandError

from mmrwatch.agent import cli, drgn_plugin, exits
from mmrwatch.collectors import target
from mmrwatch.collectors.errors import CheckTimeout, MmrwatchError, RangesError, TargetError
from mmrwatch.collectors.vocab import DEBUGINFO, NOINPUT, TIMEOUT


def _run(monkeypatch, err: MmrwatchError, sub: str = "ptdump", *opts: str):
    monkeypatch.setattr(target, "from_program", lambda prog: object())

    def boom(ns):
        raise err
    monkeypatch.setattr(cli, "cmd_ptdump", boom)
    return drgn_plugin._cmd_mmrwatch(None, "mmrwatch",
                                     argparse.Namespace(subcommand=sub, options=list(opts)))


@pytest.mark.parametrize("err", [TargetError(DEBUGINFO, "no vmlinux"),
                                 RangesError("no such file", NOINPUT),
                                 CheckTimeout(3),            # not caught before item 1's base
                                 MmrwatchError(TIMEOUT, "late")])
def test_every_mmrwatch_error_becomes_one_command_error(monkeypatch, err):
    with pytest.raises(CommandError) as caught:
        _run(monkeypatch, err)
    assert not isinstance(caught.value, CommandArgumentError)
    assert str(caught.value) == f"mmrwatch: {err}"
    assert caught.value.kind == err.kind
    assert caught.value.exit_status == exits.outcome(err).exit


def test_bad_options_are_an_argument_error_with_the_usage_exit(monkeypatch):
    with pytest.raises(CommandArgumentError) as caught:
        _run(monkeypatch, TargetError(DEBUGINFO, "unused"), "ptdump", "--no-such-option")
    assert "--no-such-option" in str(caught.value)
    assert caught.value.exit_status == exits.EXIT_USAGE
