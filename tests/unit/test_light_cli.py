"""`mmrwatch --help` and every `mmrwatch <cmd> --help` answer without importing drgn, the
daemon or the metrics libraries (issue 17: ~1 s before, against 0.05 s now), in a fresh
interpreter, as a user at a terminal runs them."""
import subprocess
import sys

import pytest

PROBE = """
import contextlib, io, sys
from mmrwatch.agent import cli
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        rc = cli.main(sys.argv[1:])
    except SystemExit as e:
        rc = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("drgn", "_drgn", "prometheus_client",
               "psutil") or m in ("mmrwatch.agent.serve", "mmrwatch.collectors.engine"))
print(rc, len(out.getvalue()), ",".join(heavy))
"""


@pytest.mark.parametrize("cmd", ["", "report", "ptdump", "where", "serve", "check"])
def test_help_imports_nothing_heavy(cmd):
    argv = [cmd, "--help"] if cmd else ["--help"]
    res = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         check=True)
    rc, size, heavy = (res.stdout.strip().split(" ") + [""])[:3]
    assert rc == "0" and int(size) > 500, res.stdout     # it did print the help
    assert heavy == "", f"mmrwatch {cmd} --help imported {heavy}"
