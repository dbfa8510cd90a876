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
from pathlib import Path
from typing import Optional

import drgn

NOINPUT, DATA, DEBUGINFO, PERMISSION = "noinput", "data", "debuginfo", "permission"
KCORE = "/proc/kcore"


class TargetError(Exception):
    """A target that cannot be used; ``kind`` selects the exit code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Target:
    """An opened kernel with its debug info loaded."""

    prog: drgn.Program
    path: str
    live: bool
    fmt: str                    # "elf", "kdump", "live"
    vmlinux: Optional[str]
    build_id: Optional[str]     # the kernel's, when it says


def debuginfo_candidates(release: str) -> list[Path]:
    """Where distributions put vmlinux for ``release`` (first match wins)."""
    return [Path(f"/usr/lib/debug/boot/vmlinux-{release}"),
            Path(f"/usr/lib/debug/lib/modules/{release}/vmlinux"),
            Path(f"/boot/vmlinux-{release}")]


def elf_build_id(path: Path) -> Optional[str]:
    """The GNU build-id note of an ELF file, as hex (None if it has none)."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if eh[:4] != b"\x7fELF" or eh[4] != 2:
            return None
        shoff, = struct.unpack_from("<Q", eh, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", eh, 0x3A)
        f.seek(shoff)
        shdrs = f.read(shentsize * shnum)
        for i in range(shnum):
            sh_type, = struct.unpack_from("<I", shdrs, i * shentsize + 4)
            if sh_type != 7:  # SHT_NOTE
                continue
            off, size = struct.unpack_from("<QQ", shdrs, i * shentsize + 0x18)
            f.seek(off)
            notes = f.read(min(size, 1 << 16))
            pos = 0
            while pos + 12 <= len(notes):
                nsz, dsz, typ = struct.unpack_from("<III", notes, pos)
                name = notes[pos + 12:pos + 12 + nsz]
                dpos = pos + 12 + ((nsz + 3) & ~3)
                if typ == 3 and name.rstrip(b"\0") == b"GNU":
                    return notes[dpos:dpos + dsz].hex()
                pos = dpos + ((dsz + 3) & ~3)
    return None


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


def _load_debug_info(prog: drgn.Program, vmlinux: Optional[str]) -> tuple[str, Optional[str]]:
    release = prog["UTS_RELEASE"].string_().decode()
    vmci = prog["VMCOREINFO"].string_().decode(errors="replace")
    kbid = next((ln.split("=", 1)[1].strip() for ln in vmci.splitlines()
                 if ln.startswith("BUILD-ID=")), None)
    if vmlinux is None:
        found = [p for p in debuginfo_candidates(release) if p.exists()]
        if not found:
            looked = ", ".join(str(p) for p in debuginfo_candidates(release))
            raise TargetError(DEBUGINFO, f"no debug info for kernel {release}: pass --vmlinux "
                                         f"PATH (looked in {looked})")
        vmlinux = str(found[0])
    if not os.path.exists(vmlinux):
        raise TargetError(NOINPUT, f"{vmlinux}: no such file")
    try:
        fbid = elf_build_id(Path(vmlinux))
    except PermissionError:
        raise TargetError(PERMISSION, f"{vmlinux}: permission denied") from None
    except OSError as e:
        raise TargetError(DEBUGINFO, f"{vmlinux}: unreadable: {e.strerror}") from None
    if fbid is None:
        raise TargetError(DEBUGINFO, f"{vmlinux}: not an ELF file with a build-id")
    if kbid and fbid != kbid:
        raise TargetError(DEBUGINFO, f"{vmlinux}: build-id {fbid[:16]}... does not match the "
                                     f"kernel's {kbid[:16]}... (release {release})")
    try:
        prog.load_debug_info([vmlinux])
    except drgn.MissingDebugInfoError:
        raise TargetError(DEBUGINFO, f"{vmlinux}: does not match kernel {release} "
                                     "(drgn rejected it)") from None
    try:
        prog.type("struct mm_struct")
    except LookupError:
        raise TargetError(DEBUGINFO, f"{vmlinux}: has no DWARF type information") from None
    return vmlinux, kbid


def open_vmcore(path: str, vmlinux: Optional[str] = None) -> Target:
    """Open a crash dump and load matching debug info."""
    fmt = _sniff(path)
    prog = drgn.Program()
    try:
        prog.set_core_dump(path)
    except (ValueError, OSError) as e:
        raise TargetError(DATA, f"{path}: cannot read as a kernel dump: {str(e).splitlines()[0]}") \
            from None
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise TargetError(DATA, f"{path}: a core dump, but not of a Linux kernel (no VMCOREINFO)")
    vml, bid = _load_debug_info(prog, vmlinux)
    return Target(prog, path, False, fmt, vml, bid)


def open_live(vmlinux: Optional[str] = None) -> Target:
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
    vml, bid = _load_debug_info(prog, vmlinux)
    return Target(prog, KCORE, True, "live", vml, bid)


def open_target(vmcore: Optional[str], vmlinux: Optional[str] = None) -> Target:
    """The dump at ``vmcore`` if given, else the running kernel."""
    return open_vmcore(vmcore, vmlinux) if vmcore else open_live(vmlinux)


def from_program(prog: drgn.Program) -> Target:
    """A target for a program someone else opened (drgn's CLI, with its debug info)."""
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise TargetError(DATA, "this drgn program is not a Linux kernel")
    try:
        prog.type("struct mm_struct")
    except LookupError:
        raise TargetError(DEBUGINFO, "drgn has no kernel debug info loaded (use -s vmlinux)") \
            from None
    live = bool(prog.flags & drgn.ProgramFlags.IS_LIVE)
    vmci = prog["VMCOREINFO"].string_().decode(errors="replace")
    bid = next((ln.split("=", 1)[1].strip() for ln in vmci.splitlines()
                if ln.startswith("BUILD-ID=")), None)
    return Target(prog, KCORE if live else "(opened by drgn)", live, "live" if live else "elf",
                  None, bid)
