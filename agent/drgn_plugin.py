"""drgn plugin: ``%mmrwatch report|ptdump|where`` inside ``drgn -c vmcore -s vmlinux``.

Registered under drgn's ``drgn.plugins`` entry point, so installing mmrwatch into the same
environment as drgn is enough.  The commands are the CLI's own, run on the program drgn
already opened (its debug info, or BTF + kallsyms loaded into it when it has none).
Errors raise drgn's ``CommandError`` (``CommandArgumentError`` for bad options) with one
line, so scripts using ``drgn.commands.run_command`` can catch them, and ``report`` returns
its verdict's exit status (0 ok, 1 warnings, 2 critical) as the command's value.  Every
``MmrwatchError`` is caught as the CLI catches it, and the error carries its ``kind`` and
the CLI's exit code for it (``exit_status``, from ``agent/exits.py``), so a script can tell
a missing ranges file from an unusable dump without parsing the message.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

from drgn import Program
from drgn.commands import argument
from drgn.commands.linux import linux_kernel_command


@linux_kernel_command(
    description="mmrwatch: are firmware-critical MMIO ranges mapped in efi_mm and init_mm?",
    long_description="Subcommands: report [--format text|json|markdown] [--ranges FILE] [-v], "
                     "ptdump [--mm kernel|efi] [--uv], where [--mm kernel|efi|both] PHYS...",
    arguments=(argument("subcommand", choices=("report", "ptdump", "where"),
                        help="what to run"),
               argument("options", nargs=argparse.REMAINDER,
                        help="the subcommand's options (see %%mmrwatch SUBCOMMAND --help)")),
)
def _cmd_mmrwatch(prog: Program, name: str, args: argparse.Namespace,
                  **kwargs: Any) -> Optional[int]:
    from drgn.commands import CommandArgumentError, CommandError

    from mmrwatch.collectors.errors import MmrwatchError
    from mmrwatch.collectors.target import from_program

    from . import cli, exits
    parser = cli.build_parser(embedded=True)
    try:
        ns = parser.parse_args([args.subcommand, *args.options])
        ns.target = from_program(prog)
        run = {"report": cli.cmd_report, "ptdump": cli.cmd_ptdump, "where": cli.cmd_where}
        return run[ns.cmd](ns)
    except MmrwatchError as e:
        # bad options keep argparse's own message; everything else reads as the CLI's line
        err = (CommandArgumentError(str(e)) if isinstance(e, cli.UsageError)
               else CommandError(f"mmrwatch: {e}"))
        err.kind, err.exit_status = e.kind, exits.outcome(e).exit
        raise err from None
    except SystemExit:          # --help
        return None
