"""Open what the user points at: a vmcore (ELF or kdump-compressed) or the live kernel.

Every way this can go wrong ends in a ``TargetError`` with a one-line cause and a *kind*
the CLI maps to a documented exit code: the input is missing or unreadable, it is not a
kernel dump (or is truncated / in makedumpfile's flattened format), or the debug info is
missing or belongs to another build.  A vmlinux whose build-id differs from the kernel's
is refused: wrong DWARF offsets would silently produce wrong answers.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Optional

import drgn

from . import debuginfo
from .debuginfo import DebugInfo, Request
from .errors import DATA, DEBUGINFO, NOINPUT, PERMISSION, TargetError

KCORE = "/proc/kcore"


@dataclass
class Target:
    """An opened kernel with its debug info loaded."""

    prog: drgn.Program
    path: str
    live: bool
    fmt: str                    # "elf", "kdump", "live"
    vmlinux: Optional[str]      # the DWARF file, when types came from DWARF
    build_id: Optional[str]     # the kernel's, when it says
    debuginfo: Optional[DebugInfo] = None   # where types and symbols came from


def _sniff(path: str) -> str:
    """Dump format from the magic bytes, refusing what drgn would misread."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise TargetError(NOINPUT, f"{path}: no such file") from None
    except PermissionError:
        raise TargetError(PERMISSION, f"{path}: permission denied") from None
    except IsADirectoryError:
        raise TargetError(NOINPUT, f"{path}: is a directory, not a dump") from None
    if head.startswith(b"makedumpfile"):
        raise TargetError(DATA, f"{path}: makedumpfile flattened format; reassemble it first: "
                                f"makedumpfile -R OUT < {path}")
    if head.startswith(b"KDUMP   "):
        return "kdump"
    if head.startswith(b"\x7fELF"):
        _check_elf_size(path, head, size)
        return "elf"
    raise TargetError(DATA, f"{path}: not a kernel dump (neither ELF nor kdump-compressed)")


def _check_elf_size(path: str, eh: bytes, size: int) -> None:
    """A truncated ELF core would read as zeros or fault at random; refuse it up front."""
    if len(eh) < 64 or struct.unpack_from("<H", eh, 16)[0] != 4:
        raise TargetError(DATA, f"{path}: ELF file but not a core dump")
    phoff, = struct.unpack_from("<Q", eh, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", eh, 0x36)
    with open(path, "rb") as f:
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    if len(ph) < phentsize * phnum:
        raise TargetError(DATA, f"{path}: truncated (program headers cut off)")
    need = 0
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", ph, i * phentsize)
        off, = struct.unpack_from("<Q", ph, i * phentsize + 8)
        filesz, = struct.unpack_from("<Q", ph, i * phentsize + 32)
        if p_type in (1, 4):  # PT_LOAD, PT_NOTE
            need = max(need, off + filesz)
    if need > size:
        raise TargetError(DATA, f"{path}: truncated: segments need {need} bytes, file has {size}")


def _load(prog: drgn.Program, req: Request, live: bool) -> tuple[DebugInfo, Optional[str]]:
    info = debuginfo.load(prog, req, live)
    bid = debuginfo.vmcoreinfo(prog).get("BUILD-ID", "").strip() or None
    return info, bid


def _request(vmlinux: Optional[str], req: Optional[Request]) -> Request:
    return req if req is not None else Request(vmlinux=vmlinux)


def open_vmcore(path: str, vmlinux: Optional[str] = None, req: Optional[Request] = None) -> Target:
    """Open a crash dump and load matching types and symbols (``req``, default auto)."""
    fmt = _sniff(path)
    prog = drgn.Program()
    try:
        prog.set_core_dump(path)
    except (ValueError, OSError) as e:
        raise TargetError(DATA, f"{path}: cannot read as a kernel dump: {str(e).splitlines()[0]}") \
            from None
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise TargetError(DATA, f"{path}: a core dump, but not of a Linux kernel (no VMCOREINFO)")
    info, bid = _load(prog, _request(vmlinux, req), False)
    return Target(prog, path, False, fmt, _dwarf_path(info), bid, info)


def _dwarf_path(info: DebugInfo) -> Optional[str]:
    return info.types_path if info.types == debuginfo.DWARF else None


def open_live(vmlinux: Optional[str] = None, req: Optional[Request] = None) -> Target:
    """Open the running kernel through /proc/kcore (root + CAP_SYS_RAWIO)."""
    prog = drgn.Program()
    try:
        prog.set_kernel()
    except FileNotFoundError:
        raise TargetError(NOINPUT, f"{KCORE}: not present (kernel without CONFIG_PROC_KCORE, "
                                   "or /proc not mounted)") from None
    except PermissionError:
        raise TargetError(PERMISSION, f"{KCORE}: permission denied (needs root with "
                                      "CAP_SYS_RAWIO, and no lockdown=confidentiality)") from None
    except (ValueError, OSError) as e:
        raise TargetError(DATA, f"{KCORE}: cannot open: {str(e).splitlines()[0]}") from None
    info, bid = _load(prog, _request(vmlinux, req), True)
    return Target(prog, KCORE, True, "live", _dwarf_path(info), bid, info)


def open_target(vmcore: Optional[str], vmlinux: Optional[str] = None,
                req: Optional[Request] = None) -> Target:
    """The dump at ``vmcore`` if given, else the running kernel."""
    return open_vmcore(vmcore, vmlinux, req) if vmcore else open_live(vmlinux, req)


def from_program(prog: drgn.Program) -> Target:
    """A target for a program someone else opened (drgn's CLI): its debug info if it has
    DWARF loaded, else BTF + kallsyms loaded into it now."""
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise TargetError(DATA, "this drgn program is not a Linux kernel")
    live = bool(prog.flags & drgn.ProgramFlags.IS_LIVE)
    try:
        prog.type("struct mm_struct")
        info = DebugInfo(debuginfo.DWARF, "(loaded by drgn)", debuginfo.DWARF, "(loaded by drgn)")
    except LookupError:
        try:
            info = debuginfo.load_btf(prog, Request(mode=debuginfo.BTF), live,
                                      debuginfo.vmcoreinfo(prog))
        except TargetError as e:
            raise TargetError(DEBUGINFO, f"drgn has no kernel debug info loaded and {e} "
                              "(or use drgn -s vmlinux)") from None
    bid = debuginfo.vmcoreinfo(prog).get("BUILD-ID", "").strip() or None
    return Target(prog, KCORE if live else "(opened by drgn)", live, "live" if live else "elf",
                  None, bid, info)
