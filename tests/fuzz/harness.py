"""Run fuzz cases and classify what happened (issue 15 item 11).

Outcome classes, exactly as item 11 names them:

* ``result``      a check result: exit 0/1/2, or the in-process report produced;
* ``walk-error``  a result that records page-table walk errors (a corrupt table ended a
  branch, not the check);
* ``documented``  a documented exit code: 64 usage, 65 input not usable, 66 not found,
  69 debug info, 77 permission (in process: a ``TargetError`` / ``RangesError``, which the
  CLI maps to those);
* ``fail``        anything else: a traceback, any other exception in process, exit 70 or
  an undocumented code, or more than ``LIMIT`` seconds of CPU for one case (or ``WALL``
  seconds of wall time: a case blocked without using CPU).

The limit is on CPU time so that other processes' load (this machine's 2 cores also run
other workers' QEMU guests) cannot turn a case into a failure: under a load of 6 a case
takes 3-4x its idle wall time.

Besides the class, *anomalies* are counted (never failures): a documented error whose
message is not one printable line, a JSON report the shipped schema rejects.

In-process cases call what the CLI calls, on the program the case built: ``cli.cmd_report``
/ ``cmd_ptdump`` / ``cmd_where`` through the embedded (drgn-plugin) parser with the target
set, so option parsing, the check, forensics and the renderers all run; dump cases open the
file with ``collectors.target.open_vmcore`` like ``--vmcore`` does.  CLI cases run
``python -m mmrwatch`` as a subprocess.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

LIMIT = 10.0                                   # CPU seconds for one case
WALL_FACTOR = 6                                # ... and LIMIT x this many seconds of wall time
REAL_EVERY = 0          # every Nth dumps seed is a real-dump case (gen_real), when one exists
DOCUMENTED = {64: "usage", 65: "data", 66: "noinput", 69: "debuginfo", 77: "permission"}
CLASSES = ("result", "walk-error", "documented", "fail")
KINDS = ("tables", "dumps", "ranges")
MMRWATCH = [sys.executable, "-m", "mmrwatch"]


class CaseTimeout(BaseException):
    """Raised by the alarm in a case past LIMIT (a BaseException: no production ``except
    Exception`` can swallow it)."""


@dataclass
class Outcome:
    kind: str
    seed: int
    cli: bool
    sub: str = ""
    cls: str = ""
    detail: str = ""             # exit code / exception / error kind
    seconds: float = 0.0
    recipe: list[str] = field(default_factory=list)
    trace: str = ""
    anomalies: list[str] = field(default_factory=list)
    command: str = ""            # how to rerun a CLI case by hand

    @property
    def case(self) -> str:
        return f"{self.kind}:{self.seed}{' --cli' if self.cli else ''}"

    def describe(self) -> str:
        out = [f"case {self.case} [{self.sub}] -> {self.cls} ({self.detail}) in "
               f"{self.seconds:.2f} s",
               f"  replay: .venv/bin/python -m tests.fuzz --replay {self.kind}:{self.seed}"
               + (" --cli" if self.cli else "")
               + (f" --real-every {REAL_EVERY}" if self.sub == "real" else " [--keep DIR]")]
        out += [f"  corruption: {r}" for r in self.recipe]
        if self.command:
            out.append(f"  command: {self.command}")
        out += [f"  anomaly: {a}" for a in self.anomalies]
        if self.trace:
            out += ["  " + ln for ln in self.trace.rstrip().splitlines()[-25:]]
        return "\n".join(out)


def case_rng(kind: str, seed: int) -> random.Random:
    return random.Random(f"mmrwatch-fuzz:{kind}:{seed}")


def tmpdir(pid: Optional[int] = None) -> str:
    """This process's scratch directory (tmpfs when there is one)."""
    d = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    path = os.path.join(d, f"mmrwatch-fuzz-{pid or os.getpid()}")
    if pid is None:
        os.makedirs(path, exist_ok=True)
    return path


def cleanup(pid: Optional[int] = None) -> None:
    """Remove a process's scratch files (its tmpdir, its real-dump copies)."""
    import shutil
    for d in (tmpdir(pid or os.getpid()), f"/var/tmp/mmrwatch-fuzz-{pid or os.getpid()}"):
        shutil.rmtree(d, ignore_errors=True)


# -- in process -----------------------------------------------------------------------------
_last: dict[str, object] = {}


def _install_recorder() -> None:
    """Keep the CheckResult of the last ``engine.run_check`` (the report's walk errors)."""
    from mmrwatch.collectors import engine
    if getattr(engine.run_check, "_fuzz", False):
        return
    real = engine.run_check

    def run_check(*a, **kw):
        res = real(*a, **kw)
        _last["res"] = res
        return res
    run_check._fuzz = True          # type: ignore[attr-defined]
    engine.run_check = run_check


def _one_line(msg: str) -> Optional[str]:
    if "\n" in msg or not msg.isprintable() or not msg.strip():
        return f"error message is not one printable line: {msg[:200]!r}"
    return None


def inprocess(out: Outcome, body: Callable[[], tuple[int, int, list[str]]]) -> Outcome:
    """Run ``body`` (returns exit status, walk errors, anomalies) under the alarm and
    classify it; exceptions are classified here."""
    from mmrwatch.agent.cli import UsageError
    from mmrwatch.collectors.errors import TargetError
    from mmrwatch.collectors.userranges import RangesError
    _install_recorder()
    old = signal.signal(signal.SIGALRM, _alarm), signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, LIMIT)
    signal.setitimer(signal.ITIMER_REAL, LIMIT * WALL_FACTOR)
    t0, c0 = time.monotonic(), time.process_time()
    try:
        rc, walk_errors, anomalies = body()
        out.anomalies += anomalies
        out.cls = "walk-error" if walk_errors else "result"
        out.detail = f"exit {rc}" + (f", {walk_errors} walk errors" if walk_errors else "")
        if rc not in (0, 1, 2):
            out.cls, out.detail = "fail", f"exit status {rc} from a result"
    except CaseTimeout:
        out.cls, out.detail = "fail", (f"over {LIMIT:.0f} s of CPU" if time.process_time() - c0
                                       >= LIMIT else f"over {LIMIT * WALL_FACTOR:.0f} s wall")
        out.trace = traceback.format_exc()
    except (TargetError, RangesError, UsageError) as e:
        out.cls = "documented"
        if isinstance(e, UsageError):
            out.detail = f"UsageError (exit 64): {str(e)[:160]}"
        elif isinstance(e, TargetError):
            out.detail = f"TargetError({e.kind}): {str(e)[:160]}"
        else:
            out.detail = f"RangesError({e.kind}): {str(e)[:160]}"
        bad = _one_line(str(e))
        if bad:
            out.anomalies.append(bad)
    except Exception as e:                       # noqa: BLE001 - that is the point
        out.cls, out.detail = "fail", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        out.trace = traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGALRM, old[0])
        signal.signal(signal.SIGPROF, old[1])
    out.seconds = time.monotonic() - t0
    cpu = time.process_time() - c0
    if cpu > LIMIT and out.cls != "fail":
        out.cls, out.detail = "fail", f"took {cpu:.1f} s of CPU (> {LIMIT:.0f} s): {out.detail}"
    return out


def _alarm(signum, frame):
    raise CaseTimeout()


def commands(rng: random.Random, ranges: Optional[str] = None) -> list[list[str]]:
    """The CLI commands one case runs (report always, ptdump/where sometimes)."""
    fmt = rng.choice(["json", "json", "text", "markdown"])
    report = ["report", "--format", fmt] + (["-v"] if rng.random() < 0.3 else [])
    if ranges:
        report += ["--ranges", ranges]
    cmds = [report]
    c = rng.random()
    if c < 0.15:
        cmds.append(["ptdump", "--mm", rng.choice(["kernel", "efi"])]
                    + (["--uv"] if rng.random() < 0.5 else []))
    elif c < 0.25:
        pas = rng.sample(["0xfa000000", "0xffc00000", "0x7e000000", "0x3fff0000000", "0",
                          "0x1000", f"{rng.getrandbits(52):#x}", "0xfffffffffffff000"], 2)
        cmds.append(["where", "--mm", rng.choice(["kernel", "efi", "both"]), *pas])
    return cmds


def run_commands(target, cmds: list[list[str]]) -> tuple[int, int, list[str]]:
    """The embedded CLI commands on an open target: (report's exit status, walk errors,
    anomalies)."""
    from mmrwatch.agent import cli
    parser = cli.build_parser(embedded=True)
    rc, walk, anomalies = 0, 0, []
    for argv in cmds:
        ns = parser.parse_args(argv)
        ns.target = target
        _last.pop("res", None)
        so, se = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            code = {"report": cli.cmd_report, "ptdump": cli.cmd_ptdump,
                    "where": cli.cmd_where}[argv[0]](ns)
        if argv[0] == "report":
            rc = code
            res = _last.get("res")
            walk += len(res.walk_errors) if res is not None else 0
            if "--format" in argv and argv[argv.index("--format") + 1] == "json":
                doc = json.loads(so.getvalue())
                if _validate_this_case():
                    bad = _validate(doc)
                    if bad:
                        anomalies.append(bad)
        else:
            walk += se.getvalue().count("page-table error")
            if code != 0:
                rc = code
    return rc, walk, anomalies


_case: tuple = ()          # (kind, seed) of the case running in this process


def _validate_this_case() -> bool:
    """A fifth of the in-process JSON reports are validated against the shipped schema
    (drawn from the case id, not from the case's generator: the cases stay the same)."""
    return random.Random(f"validate:{_case}").random() < 0.2


# -- subprocess -------------------------------------------------------------------------------
_schema = None


SAMPLE = 256                 # ranges of a report validated: the first and the last this many


def _sample(doc: dict) -> dict:
    """``doc`` with at most 2 x ``SAMPLE`` ranges: the schema holds every range to the same
    rules, and jsonschema needs ~14 s for the 20 MB report of a legitimately huge UV system
    (11,000 pnodes) that mmrwatch itself writes in 3 s; the validation is the harness's."""
    ranges = doc.get("ranges")
    if not isinstance(ranges, list) or len(ranges) <= 2 * SAMPLE:
        return doc
    return {**doc, "ranges": ranges[:SAMPLE] + ranges[-SAMPLE:]}


def _validate(doc: dict) -> Optional[str]:
    global _schema
    try:
        import jsonschema
    except ImportError:
        return None
    if _schema is None:
        from tests.synth import report_schema
        _schema = report_schema()
    try:
        jsonschema.validate(_sample(doc), _schema)
    except jsonschema.ValidationError as e:
        return f"JSON report fails the shipped schema: {e.message[:200]}"
    return None


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for children (a CLI case's subprocess)."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cli_run(out: Outcome, argvs: list[list[str]]) -> Outcome:
    """Run each argv as ``python -m mmrwatch ...``; the worst outcome is the case's."""
    t0 = time.monotonic()
    walk, classes, details = 0, [], []
    out.command = " ; ".join("mmrwatch " + " ".join(a) for a in argvs)
    for argv in argvs:
        c1 = _children_cpu()
        try:
            res = subprocess.run(MMRWATCH + argv, capture_output=True, text=True,
                                 timeout=LIMIT * WALL_FACTOR, errors="replace")
        except subprocess.TimeoutExpired:
            classes.append("fail")
            details.append(f"{argv[0]}: over {LIMIT * WALL_FACTOR:.0f} s wall")
            continue
        took = _children_cpu() - c1
        rc, err = res.returncode, res.stderr
        if "Traceback" in err or rc == 70 or (rc not in (0, 1, 2) and rc not in DOCUMENTED):
            classes.append("fail")
            details.append(f"{argv[0]}: exit {rc}")
            out.trace += f"$ mmrwatch {' '.join(argv)}\nexit {rc}\n{err[-3000:]}"
            continue
        if rc in DOCUMENTED:
            classes.append("documented")
            details.append(f"{argv[0]}: exit {rc} {err.strip()[:160]}")
            # a usage error adds "Try 'mmrwatch --help'." by design
            lines = [ln for ln in err.strip().splitlines() if not ln.startswith("Try ")]
            if len(lines) != 1 or not lines[0].isprintable():
                out.anomalies.append(f"{argv[0]} exit {rc}: stderr is not one printable "
                                     f"line: {err[:300]!r}")
            if res.stdout:
                out.anomalies.append(f"{argv[0]} exit {rc}: stdout not empty")
            continue
        if argv[0] == "report" and "json" in argv:
            try:
                doc = json.loads(res.stdout)
            except ValueError as e:
                classes.append("fail")
                details.append(f"report: exit {rc} but stdout is not JSON ({e})")
                continue
            walk += len(doc.get("walk_errors", []))
            bad = _validate(doc)
            if bad:
                out.anomalies.append(bad)
        else:
            walk += err.count("page-table error")
        classes.append("result")
        details.append(f"{argv[0]}: exit {rc}")
        if took > LIMIT:
            classes[-1] = "fail"
            details[-1] += f" in {took:.1f} s of CPU"
    out.seconds = time.monotonic() - t0
    order = {c: i for i, c in enumerate(CLASSES)}
    worst = max(classes, key=order.__getitem__) if classes else "fail"
    if worst == "result" and walk:
        worst = "walk-error"
    out.cls = worst
    out.detail = "; ".join(details) + (f"; {walk} walk errors" if walk else "")
    return out


# -- cases ------------------------------------------------------------------------------------
def run_case(kind: str, seed: int, cli: bool = False, keep: Optional[str] = None,
             limit: Optional[float] = None) -> Outcome:
    """Build case ``kind:seed`` and run it (in process, or through the CLI); ``limit``
    replaces ``LIMIT`` for this case (the slice runs known hangs with a shorter one)."""
    global LIMIT
    if limit is not None:
        saved, LIMIT = LIMIT, limit
        try:
            return run_case(kind, seed, cli, keep)
        finally:
            LIMIT = saved
    import importlib
    global _case
    _case = (kind, seed)
    out = Outcome(kind, seed, cli)
    rng = case_rng(kind, seed)
    try:
        run = importlib.import_module(f"tests.fuzz.gen_{kind}").run
        return run(rng, out, keep)
    except CaseTimeout:
        out.cls, out.detail, out.trace = "fail", "timeout while building", traceback.format_exc()
        return out
    except Exception:                            # noqa: BLE001
        # the generator itself broke: not a production failure, but never hidden
        out.cls, out.detail = "fail", "harness error (generator)"
        out.trace = traceback.format_exc()
        out.sub = out.sub or "harness"
        return out
