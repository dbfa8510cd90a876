"""The target options (what to open, where its types and symbols come from), defined once
for ``report``, ``ptdump``, ``where``, ``serve`` and ``check``.

Nothing here imports drgn: ``mmrwatch <cmd> --help`` must stay fast.
"""
from __future__ import annotations

import argparse

DEBUG_INFO_HELP = ("where types and symbols come from: auto (default: BTF + kallsyms when "
                   "the kernel has them, else DWARF), btf, or dwarf (the vmlinux)")


def add(p: argparse.ArgumentParser, live_default: bool = False, vmcore_help: str = "") -> None:
    """``--vmcore``/``--live`` (required unless ``live_default``) and the debug-info options."""
    g = p.add_mutually_exclusive_group(required=not live_default)
    g.add_argument("--vmcore", metavar="PATH", help=vmcore_help or "crash dump: ELF "
                   "(/proc/vmcore, QEMU) or kdump-compressed (makedumpfile)")
    g.add_argument("--live", action="store_true", default=live_default,
                   help="the running kernel (/proc/kcore)" + (" (default)" if live_default
                                                               else ""))
    p.add_argument("--debug-info", dest="debug_info", choices=("auto", "btf", "dwarf"),
                   default="auto", help=DEBUG_INFO_HELP)
    p.add_argument("--vmlinux", metavar="PATH", help="kernel DWARF (implies --debug-info dwarf "
                   "under auto; default: /usr/lib/debug/boot/vmlinux-RELEASE and the other "
                   "standard places)")
    p.add_argument("--btf", metavar="PATH", help="kernel BTF: a raw blob or a vmlinux with a "
                   ".BTF section (default: /sys/kernel/btf/vmlinux live, the kernel image in "
                   "a dump)")
    p.add_argument("--system-map", dest="system_map", metavar="PATH",
                   help="System.map of the kernel, for dumps of kernels before 6.0 (no kallsyms "
                        "in VMCOREINFO)")


# set by systemd/mmrwatch-kallsyms.conf: this boot's /proc/kallsyms, copied by a privileged
# ExecStartPre= for kernels before 6.0 (the daemon itself then needs no CAP_SYSLOG)
SYSTEM_MAP_ENV = "MMRWATCH_SYSTEM_MAP"


def request(args: argparse.Namespace):
    """The collectors' debug-info request for parsed ``args``."""
    import os

    from mmrwatch.collectors.debuginfo import Request
    smap = getattr(args, "system_map", None)
    if smap is None and not getattr(args, "vmcore", None):
        smap = os.environ.get(SYSTEM_MAP_ENV) or None        # live only
    return Request(getattr(args, "debug_info", "auto"), getattr(args, "vmlinux", None),
                   getattr(args, "btf", None), smap)


def open_target(args: argparse.Namespace):
    """Open what ``args`` name (a dump, else the running kernel)."""
    from mmrwatch.collectors import target
    return target.open_target(getattr(args, "vmcore", None), req=request(args))
