"""The options of ``serve`` and ``check``, apart from the modules that run them.

``mmrwatch --help`` and ``mmrwatch <cmd> --help`` build every subcommand's parser; keeping
the definitions here (argparse and constants only) means that does not import drgn,
prometheus-client or the daemon.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .exits import NAGIOS_CRITICAL, NAGIOS_OK, NAGIOS_UNKNOWN, NAGIOS_WARNING

DEFAULT_LISTEN = "127.0.0.1:19864"
PER_RANGE = ("mismatch", "all", "none")


class _Version(argparse.Action):
    """``serve --version``, as node_exporter prints it (computed only when asked)."""

    def __init__(self, option_strings, dest, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        import platform
        from importlib import metadata

        import mmrwatch
        try:
            drgn = metadata.version("drgn")
        except metadata.PackageNotFoundError:
            drgn = "not installed"
        print(f"mmrwatch, version {mmrwatch.__version__} (python {platform.python_version()}, "
              f"drgn {drgn})\n  platform: {platform.system().lower()}/{platform.machine()}")
        parser.exit()


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    from . import targetopts
    targetopts.add(p, live_default=True, vmcore_help="serve the metrics of a crash dump "
                   "instead (to try rules/dashboards)")
    p.add_argument("--ranges", metavar="FILE", type=Path,
                   help="extra ranges to check (TOML, see README); re-read on SIGHUP")
    p.add_argument("--interval", type=float, default=300.0, metavar="SECONDS",
                   help="seconds between checks (default 300)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="deadline of one check in seconds (default 120)")
    p.add_argument("--per-range", choices=PER_RANGE, default="mismatch",
                   help="per-range series: only mismatched ranges (default), all, or none")
    p.add_argument("--web.listen-address", dest="listen", metavar="ADDR", action="append",
                   help=f"HOST:PORT to serve metrics on, repeatable: one listener each "
                        f"(default {DEFAULT_LISTEN}; port 0: any free port, logged; with "
                        "--textfile, no HTTP unless given)")
    p.add_argument("--web.systemd-socket", dest="systemd_socket", action="store_true",
                   help="serve on the sockets systemd passes (socket activation, "
                        "systemd/mmrwatch.socket) instead of --web.listen-address")
    p.add_argument("--web.disable-exporter-metrics", dest="disable_exporter_metrics",
                   action="store_true", help="leave out the exporter's own process_*, "
                   "python_* and mmrwatch_http_client_errors_total series")
    p.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics",
                   metavar="PATH", help="path of the metrics (default /metrics)")
    p.add_argument("--web.config.file", dest="web_config", type=Path, metavar="FILE",
                   help="exporter-toolkit web-config.yml: TLS, client CA, bcrypt basic auth")
    p.add_argument("--textfile", type=Path, metavar="PATH",
                   help="also write metrics to PATH (*.prom) for node_exporter's textfile "
                        "collector, atomically after each check")
    p.add_argument("--log.level", dest="log_level", default="info",
                   choices=("debug", "info", "warning", "error"), help="default info")
    p.add_argument("--log.format", dest="log_format", default="logfmt",
                   choices=("logfmt", "json"), help="default logfmt")
    p.add_argument("--version", action=_Version,
                   help="print the version (with Python's and drgn's) and exit")


CHECK_EXIT_CODES = f"""exit codes (Nagios plugin API):
  {NAGIOS_OK}  OK        every required range is mapped as required
  {NAGIOS_WARNING}  WARNING   warnings only (e.g. efi_mm not yet re-synced since the last EFI call)
  {NAGIOS_CRITICAL}  CRITICAL  a required range is missing, misdirected or mis-cached
  {NAGIOS_UNKNOWN}  UNKNOWN   could not check (bad usage, no /proc/kcore, permission, debug info, timeout)
"""


def add_check_arguments(p: argparse.ArgumentParser) -> None:
    from . import targetopts
    targetopts.add(p, live_default=True, vmcore_help="check a crash dump instead")
    p.add_argument("--ranges", metavar="FILE", type=Path, help="extra ranges (TOML)")
    p.add_argument("--timeout", type=float, default=50.0, metavar="SECONDS",
                   help="deadline of the check (default 50, under NRPE's 60)")
