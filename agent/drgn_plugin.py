"""drgn plugin: ``%mmrwatch report|ptdump|where`` inside ``drgn -c vmcore -s vmlinux``.

Registered under drgn's ``drgn.plugins`` entry point, so installing mmrwatch into the same
environment as drgn is enough.  The commands are the CLI's own, run on the program drgn
already opened (its debug info, no second load); errors are one line, never a traceback
into the analyst's session.
"""
from __future__ import annotations

import argparse
from typing import Any

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
def _cmd_mmrwatch(prog: Program, name: str, args: argparse.Namespace, **kwargs: Any) -> None:
    from mmrwatch.collectors.target import TargetError, from_program
    from mmrwatch.collectors.userranges import RangesError

    from . import cli
    parser = cli.build_parser(embedded=True)
    try:
        ns = parser.parse_args([args.subcommand, *args.options])
        ns.target = from_program(prog)
        run = {"report": cli.cmd_report, "ptdump": cli.cmd_ptdump, "where": cli.cmd_where}
        run[ns.cmd](ns)
    except cli.UsageError as e:
        print(e)
    except (TargetError, RangesError) as e:
        print(f"mmrwatch: {e}")
    except SystemExit:          # --help
        pass
