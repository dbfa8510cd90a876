"""The ``mmrwatch`` command line.

Every failure the user can cause ends in one line on stderr and a documented exit code;
a traceback is shown only with ``--debug`` (and only for genuine bugs, exit 70).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import mmrwatch
from mmrwatch.collectors.errors import MmrwatchError, bug_line
from mmrwatch.collectors.vocab import INTERNAL, USAGE

from . import exits
from .exits import (EXIT_CONFIG, EXIT_CRITICAL, EXIT_DATA, EXIT_DEBUGINFO, EXIT_NOINPUT,
                    EXIT_OK, EXIT_OSERR, EXIT_PERMISSION, EXIT_SOFTWARE, EXIT_USAGE, EXIT_WARNING)

EXIT_CODES = f"""exit codes:
  {EXIT_OK}   no problem found (report/ptdump produced)
  {EXIT_WARNING}   warnings only (e.g. an efi_mm slot not yet re-synced since the last EFI call)
  {EXIT_CRITICAL}   critical findings: a required range is missing, misdirected or mis-cached
  {EXIT_USAGE}  usage error (bad option or argument)
  {EXIT_DATA}  input is not usable: not a kernel dump, truncated, flattened, bad ranges file
  {EXIT_NOINPUT}  input not found (dump, vmlinux, ranges file, /proc/kcore)
  {EXIT_DEBUGINFO}  debug info missing, or its build-id does not match the kernel
  {EXIT_SOFTWARE}  internal error (a bug: rerun with --debug and report it)
  {EXIT_OSERR}  serve: cannot listen on the address, or the textfile directory is unusable
  {EXIT_PERMISSION}  permission denied (reading /proc/kcore needs root + CAP_SYS_RAWIO)
  {EXIT_CONFIG}  serve: bad --web.config.file or --ranges file
`mmrwatch check` uses the Nagios codes instead (see `mmrwatch check --help`).
"""
SERVE_NOTES = """signals: SIGHUP re-reads --ranges and --web.config.file and checks at once;
SIGTERM stops (exit 0).  Kernel-side failures (no /proc/kcore, permission, debug info,
timeout) never stop the daemon: they are exported as mmrwatch_collector_success 0.
privileges: /proc/kcore needs CAP_SYS_RAWIO (plus CAP_DAC_READ_SEARCH when not uid 0) and
is refused under lockdown=confidentiality; see systemd/mmrwatch.service.

"""


EXAMPLES = {
    "report": """examples:
  mmrwatch report --live                           # this machine (root + CAP_SYS_RAWIO)
  mmrwatch report --vmcore /var/crash/vmcore --format markdown > ticket.md
  mmrwatch report --vmcore vmcore --system-map System.map-5.14.0   # kernels before 6.0
  mmrwatch report --vmcore vmcore --vmlinux /usr/lib/debug/boot/vmlinux-6.1.0-13-amd64
""",
    "ptdump": """examples:
  mmrwatch ptdump --vmcore vmcore --mm efi         # like /sys/kernel/debug/page_tables/efi
  mmrwatch ptdump --live --uv                      # plus where each UV range sits
""",
    "where": """examples:
  mmrwatch where --vmcore vmcore 0xfa000000        # every VA mapping LOCAL_MMR's first page
""",
    "serve": """examples:
  mmrwatch serve --web.listen-address 0.0.0.0:19864 --web.config.file /etc/mmrwatch/web.yml
  mmrwatch serve --textfile /var/lib/prometheus/node-exporter/mmrwatch.prom
""",
    "check": """examples:
  mmrwatch check                                   # NRPE: command[mmrwatch]=mmrwatch check
""",
}


class UsageError(MmrwatchError):
    """Bad command line; argparse's own exit code 2 would collide with CRITICAL."""

    def __init__(self, message: str, cmd: Optional[str] = None) -> None:
        super().__init__(USAGE, message)
        self.cmd = cmd               # the subcommand whose --help the hint names


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        # no prefix matching: `report ... --debug` must not read as --debug-info
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        cmd = self.prog.split()[-1] if " " in self.prog else None
        raise UsageError(f"{self.prog}: {message}", cmd)


def _add_target(p: argparse.ArgumentParser, embedded: bool = False) -> None:
    if embedded:       # inside drgn (%mmrwatch): the program is already open
        return
    from . import targetopts
    targetopts.add(p)


def build_parser(embedded: bool = False) -> argparse.ArgumentParser:
    """The CLI; ``embedded`` is the drgn command's variant (no target options)."""
    p = _Parser(prog="%mmrwatch" if embedded else "mmrwatch", formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Check that firmware-critical MMIO ranges (SGI/HPE UV MMRs, EFI "
                            "runtime regions, ranges you configure) are mapped in both "
                            "efi_mm and init_mm, in a vmcore or the running kernel.",
                epilog=EXIT_CODES)
    p.add_argument("--version", action="version", version=f"mmrwatch {mmrwatch.__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    r = sub.add_parser("report", help="check every range and print a report",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EXAMPLES["report"] + EXIT_CODES)
    _add_target(r, embedded)
    r.add_argument("--format", choices=("text", "json", "markdown"), default="text",
                   help="text (default), json (schema: mmrwatch/report.schema.json), "
                        "markdown (for tickets)")
    r.add_argument("--ranges", metavar="FILE", type=Path,
                   help="extra ranges to check (TOML, see README)")
    r.add_argument("-v", "--verbose", action="store_true", help="show extents of OK ranges")
    d = sub.add_parser("ptdump", help="print a page table like /sys/kernel/debug/page_tables/*",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EXAMPLES["ptdump"] + EXIT_CODES)
    _add_target(d, embedded)
    d.add_argument("--mm", choices=("kernel", "efi"), default="kernel",
                   help="kernel = init_mm, efi = efi_mm (default kernel)")
    d.add_argument("--uv", action="store_true",
                   help="append the UV system summary and where each UV range sits in this "
                        "table (without it the output is identical to the kernel's)")
    w = sub.add_parser("where", help="every virtual address that maps a physical address, "
                       "in init_mm and efi_mm (reverse lookup)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EXAMPLES["where"] + EXIT_CODES)
    _add_target(w, embedded)
    w.add_argument("--mm", choices=("kernel", "efi", "both"), default="both",
                   help="which table(s) to search (default both)")
    w.add_argument("phys", nargs="+", metavar="PHYS", help="physical address (hex, 0x optional)")
    if embedded:
        return p
    _debug_anywhere(r, d, w)
    from . import cliopts
    s = sub.add_parser("serve", help="daemon: check the live kernel every --interval and "
                       "export Prometheus metrics (HTTP and/or textfile)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EXAMPLES["serve"] + SERVE_NOTES + EXIT_CODES)
    cliopts.add_serve_arguments(s)
    c = sub.add_parser("check", help="one-shot live check for Nagios/Icinga (exit 0/1/2/3)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EXAMPLES["check"] + cliopts.CHECK_EXIT_CODES)
    cliopts.add_check_arguments(c)
    _debug_anywhere(s, c)
    return p


def _debug_anywhere(*subparsers: argparse.ArgumentParser) -> None:
    """``--debug`` after the subcommand too (SUPPRESS: it must not reset the top-level one)."""
    for sp in subparsers:
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks for internal errors")


def cmd_serve(args: argparse.Namespace) -> int:
    from . import serve
    try:
        return serve.run(args)
    except MmrwatchError as e:      # startup: bad flags, files or listeners
        print(f"mmrwatch: {e}", file=sys.stderr)
        return exits.outcome(e, daemon=True).exit


def cmd_check(args: argparse.Namespace) -> int:
    from . import nagios
    code, out = nagios.run(args)
    print(out)
    return code


def _open(args: argparse.Namespace):
    if getattr(args, "target", None) is not None:      # set by the drgn command
        return args.target
    from . import targetopts
    return targetopts.open_target(args)


def cmd_report(args: argparse.Namespace) -> int:
    from mmrwatch.agent import report
    from mmrwatch.collectors import engine
    from mmrwatch.collectors import forensics, kernel
    sources = engine.default_sources(args.ranges)   # validates the file before opening
    _progress("opening the kernel and loading debug info")
    t = _open(args)
    _progress("walking efi_mm and init_mm")
    res = engine.run_check(t, sources)
    _progress("crash forensics")
    crash = forensics.analyse(t.prog, res.facts, res.spaces, kernel.make_walker(t.prog, res.facts),
                              res.ranges, res.efi_descs, t.live)
    _progress_done()
    if args.format == "json":
        sys.stdout.write(report.as_json(res, crash))
    elif args.format == "markdown":
        from . import markdown
        sys.stdout.write(markdown.render(report.as_dict(res, crash)))
    else:
        sys.stdout.write(report.text(res, args.verbose, crash))
    return report.exit_status(res)


def _progress(msg: str) -> None:
    """Progress for long walks on stderr, only for a person watching a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[Kmmrwatch: {msg}...")
        sys.stderr.flush()


def _progress_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def cmd_where(args: argparse.Namespace) -> int:
    from mmrwatch.collectors import engine, kernel, mm, ptdump, where
    from mmrwatch.collectors.ranges import human_size
    pas = []
    for text in args.phys:
        pa = where.parse_phys(text)
        if pa is None:
            raise UsageError(f"mmrwatch where: not a physical address: {text!r}")
        pas.append(pa)
    t = _open(args)
    ctx = engine.context(t)
    names = {"kernel": [mm.INIT_MM], "efi": [mm.EFI_MM], "both": [mm.INIT_MM, mm.EFI_MM]}
    markers = ptdump.kernel_markers(t.prog, ctx.facts)
    walker = kernel.make_walker(t.prog, ctx.facts)
    hits, missing_tables = [], []
    for name in names[args.mm]:
        space = ctx.spaces[name]
        if not space.has_table:
            missing_tables.append(f"{name} has no page table: {space.reason}")
        hits += where.reverse(walker, space, pas, markers, _progress)
    _progress_done()
    for pa in pas:
        print(f"PA 0x{pa:x}")
        for name in names[args.mm]:
            mine = [h for h in hits if h.pa == pa and h.mm == name]
            for h in mine:
                print(f"  {h.mm:<8} VA 0x{h.va:016x}  {human_size(h.page_size):>6} page  "
                      f"{h.cache_mode:<3} {h.perms:<10} {h.area}")
            if not mine and ctx.spaces[name].has_table:
                print(f"  {name:<8} not mapped")
    for m in missing_tables:
        print(f"note: {m}")
    for e in walker.errors:
        print(f"mmrwatch: page-table error: {e}", file=sys.stderr)
    return EXIT_OK


def cmd_ptdump(args: argparse.Namespace) -> int:
    from mmrwatch.collectors import engine, kernel, mm, ptdump
    t = _open(args)
    ctx = engine.context(t)
    facts, space = ctx.facts, ctx.spaces[mm.MM_ALIASES[args.mm]]
    if not space.has_table:
        print(f"mmrwatch: {space.name} has no page table: {space.reason}", file=sys.stderr)
        return EXIT_OK
    walker = kernel.make_walker(t.prog, facts)
    lines = ptdump.render(walker, space.root_pa, ptdump.kernel_markers(t.prog, facts))
    if args.uv:
        lines += _uv_annotation(t, ctx, space.name)
    sys.stdout.write("\n".join(lines) + "\n")
    for e in walker.errors:
        print(f"mmrwatch: page-table error: {e}", file=sys.stderr)
    return EXIT_OK


def _uv_annotation(t, ctx, mm_name: str) -> list[str]:
    """UV summary plus one line per UV range expected in ``mm_name`` and its status."""
    from mmrwatch.agent.report import uv_line
    from mmrwatch.collectors import engine
    res = engine.run_check(t, [engine.uv_source], ctx)
    out = [f"---[ mmrwatch: {uv_line(res.summaries['uv'])} ]---"]
    for f in res.findings:
        if f.mm == mm_name:
            out.append(f"0x{f.exp.va:016x}-0x{f.exp.va + f.range.size:016x}   "
                       f"{f.range.label:<18} PA 0x{f.range.phys:x}  {f.exp.rule:<8} "
                       f"{f.status} {'/'.join(f.cache_modes)}".rstrip())
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(argv if argv is not None else sys.argv[1:])
    debug = "--debug" in argv
    if not argv:                       # no command: say which there are
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if next((a for a in argv if not a.startswith("-")), None) == "check":
        return _plugin(parser, argv, debug)
    try:
        _unknown_options_first(parser, argv)
        args = parser.parse_args(argv)
        return {"report": cmd_report, "ptdump": cmd_ptdump, "serve": cmd_serve,
                "check": cmd_check, "where": cmd_where}[args.cmd](args)
    except UsageError as e:
        _progress_done()
        print(e, file=sys.stderr)
        print(f"Try 'mmrwatch {e.cmd + ' ' if e.cmd else ''}--help'.", file=sys.stderr)
        return exits.outcome(e).exit
    except MmrwatchError as e:
        _progress_done()
        print(f"mmrwatch: {e}", file=sys.stderr)
        return exits.outcome(e).exit
    except KeyboardInterrupt:
        print("mmrwatch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:  # a bug: one line unless asked
        if debug:
            raise
        print(f"mmrwatch: internal error: {bug_line(e)} (rerun with --debug)", file=sys.stderr)
        return exits.OUTCOMES[INTERNAL].exit


def _unknown_options_first(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """An option the subcommand does not have is named before anything else is complained
    about (argparse reports a missing --vmcore/--live first, hiding the typo)."""
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cmd = next((a for a in argv if not a.startswith("-")), None)
    sp = subs.choices.get(cmd) if cmd else None
    known = set(parser._option_string_actions) | (set(sp._option_string_actions) if sp else set())
    for a in argv:
        if a == "--":
            break
        if a.startswith("-") and a != "-" and a.split("=", 1)[0] not in known:
            where = f"mmrwatch {cmd}" if sp else "mmrwatch"
            raise UsageError(f"{where}: unknown option {a.split('=', 1)[0]}", cmd if sp else None)


def _plugin(parser: argparse.ArgumentParser, argv: list[str], debug: bool) -> int:
    """``check``: every failure to judge, usage errors included, is UNKNOWN (3), on stdout."""
    code = exits.OUTCOMES[INTERNAL].nagios
    try:
        return cmd_check(parser.parse_args(argv))
    except MmrwatchError as e:
        code, msg = exits.outcome(e).nagios, str(e).removeprefix("mmrwatch check: ")
    except KeyboardInterrupt:
        msg = "interrupted"
    except Exception as e:
        if debug:
            raise
        msg = f"internal error: {bug_line(e)}"
    from .nagios import line     # here: `check --help` needs neither it nor drgn
    print(line(code, msg))
    return code

