"""docs/mmrwatch.1 against the argparse definitions, so that they cannot drift.

Every subcommand has its ``.SS`` block under COMMANDS; every option of a subcommand is a
``.TP`` item of that block, of TARGET OPTIONS (when the block says it takes them) or of
GLOBAL OPTIONS; and nothing is documented that the parser does not have.  The exit codes
are the CLI's own constants; the examples parse.
"""
import argparse
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

import mmrwatch
from mmrwatch.agent import cli, targetopts

MAN = Path(__file__).resolve().parents[2] / "docs" / "mmrwatch.1"


def _unroff(s: str) -> str:
    s = s.replace("\\-", "-").replace("\\(aq", "'")
    s = re.sub(r"\\f[BIRP]", "", s)
    s = re.sub(r"^\.(B|I|BI|BR|IR|RB|RI|IB)\s+", "", s)
    return s.replace('"', "")


def _sections(text: str) -> dict[str, dict[str, list[str]]]:
    """{SH title: {SS title ('' before the first): [lines]}}"""
    out: dict[str, dict[str, list[str]]] = {}
    sh = ss = None
    for ln in text.splitlines():
        if ln.startswith(".SH "):
            sh, ss = ln[4:].strip().strip('"'), ""
            out[sh] = {"": []}
        elif ln.startswith(".SS ") and sh:
            ss = ln[4:].strip().strip('"')
            out[sh][ss] = []
        elif sh:
            out[sh][ss].append(ln)
    return out


OPT = re.compile(r"(?<![\w-])(--?[A-Za-z][\w.-]*)")


def _items(lines: list[str]) -> list[str]:
    """The term line of every ``.TP`` item, unescaped."""
    return [_unroff(lines[i + 1]) for i, ln in enumerate(lines[:-1]) if ln.strip() == ".TP"]


def _options(lines: list[str]) -> set[str]:
    return {o for term in _items(lines) for o in OPT.findall(term)}


def _parser_options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = cli.build_parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def _target_options() -> set[str]:
    p = argparse.ArgumentParser(add_help=False)
    targetopts.add(p)
    return _parser_options(p)


@pytest.fixture(scope="module")
def man() -> dict:
    return _sections(MAN.read_text())


def test_every_subcommand_has_a_section_and_nothing_else(man):
    assert set(man["COMMANDS"]) - {""} == set(_subparsers())


def test_global_and_target_options_exactly(man):
    assert _options(man["GLOBAL OPTIONS"][""]) == _parser_options(cli.build_parser())
    assert _options(man["TARGET OPTIONS"][""]) == _target_options()


@pytest.mark.parametrize("cmd", sorted(_subparsers()))
def test_subcommand_options_exactly(man, cmd):
    """Documented = the parser's, both ways (an option added to the CLI without its man
    entry fails here, and so does a man entry for an option that does not exist)."""
    block = man["COMMANDS"][cmd]
    takes_target = "TARGET OPTIONS" in "\n".join(block)
    documented = _options(block) | (_target_options() if takes_target else set())
    glob = _parser_options(cli.build_parser())
    actual = _parser_options(_subparsers()[cmd])
    missing = actual - documented - glob
    assert not missing, f"{cmd}: options without a man entry: {sorted(missing)}"
    invented = _options(block) - actual
    assert not invented, f"{cmd}: man documents options it lacks: {sorted(invented)}"
    assert takes_target == (_target_options() <= actual)
    # choices are spelled out where the option is documented
    terms = {o: t for t in _items(block) for o in OPT.findall(t)}
    for a in _subparsers()[cmd]._actions:
        if a.choices and a.option_strings and a.option_strings[-1] in terms:
            assert set(re.split(r"[|\s]+", terms[a.option_strings[-1]])) >= set(a.choices), a
    positionals = [a.metavar for a in _subparsers()[cmd]._actions if not a.option_strings
                   and not isinstance(a, argparse._SubParsersAction)]
    for m in positionals:
        assert m in _items(block), f"{cmd}: positional {m} undocumented"


def test_no_long_option_anywhere_that_does_not_exist():
    every = _parser_options(cli.build_parser()).union(
        *(_parser_options(sp) for sp in _subparsers().values()))
    text = _unroff(MAN.read_text())
    mentioned = {o for o in OPT.findall(text) if o.startswith("--")}
    assert mentioned - every == set()


def test_exit_codes_are_the_clis(man):
    codes = {int(t) for t in _items(man["EXIT STATUS"][""]) if t.strip().isdigit()}
    from mmrwatch.agent import exits
    consts = {v for k, v in vars(exits).items() if k.startswith("EXIT_") and isinstance(v, int)}
    nagios = {v for k, v in vars(exits).items() if k.startswith("NAGIOS_")}
    assert consts <= codes and nagios <= codes
    assert codes == consts | {0, 1, 2, 3}
    for code in consts:          # and each is in the --help epilog, the other place
        assert re.search(rf"^\s+{code}\s", cli.EXIT_CODES, re.M), code


def test_examples_parse(man):
    lines = [_unroff(ln) for ln in man["EXAMPLES"][""] if not ln.startswith(".")]
    cmds = [ln for ln in lines if ln.startswith("mmrwatch ")]
    assert len(cmds) >= 7
    for c in cmds:
        argv = shlex.split(c.split(">")[0])[1:]
        cli.build_parser().parse_args(argv)      # raises UsageError on a bad example
    nrpe = next(ln for ln in lines if ln.startswith("command[mmrwatch]="))
    cli.build_parser().parse_args(shlex.split(nrpe)[1:])


def test_version_and_formatting():
    head = MAN.read_text()
    assert re.search(rf'^\.TH MMRWATCH 1 "[\d-]+" "mmrwatch {re.escape(mmrwatch.__version__)}"',
                     head, re.M)
    if shutil.which("groff"):
        r = subprocess.run(["groff", "-man", "-ww", "-z", str(MAN)], capture_output=True,
                           text=True)
        assert r.returncode == 0 and not r.stderr, r.stderr
