"""Open what the user points at: a vmcore (ELF or kdump-compressed) or the live kernel.

Every way this can go wrong ends in a ``TargetError`` with a one-line cause and a *kind*
the CLI maps to a documented exit code: the input is missing or unreadable, it is not a
kernel dump (or is truncated / in makedumpfile's flattened format), or the debug info is
missing or belongs to another build.  A vmlinux whose build-id differs from the kernel's
is refused: wrong DWARF offsets would silently produce wrong answers.
"""
from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from typing import Optional

import drgn

from . import debuginfo
from .debuginfo import DebugInfo, Request
from .errors import DATA, DEBUGINFO, NOINPUT, PERMISSION, TargetError, one_line

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


def _cause(e: BaseException) -> str:
    """The first line of an exception's message (drgn's are multi-line), printable."""
    msg = str(e).strip()
    return one_line(msg.splitlines()[0] if msg else type(e).__name__)


# How an open() or read() of the dump failed, as the user acts on it: errno -> (kind, text).
_OPEN_ERRORS = {
    errno.ENOENT: (NOINPUT, "no such file"),
    errno.ENOTDIR: (NOINPUT, "no such file (a component of the path is not a directory)"),
    errno.ELOOP: (NOINPUT, "cannot open: too many levels of symbolic links"),
    errno.ENAMETOOLONG: (NOINPUT, "cannot open: file name too long"),
    errno.EISDIR: (NOINPUT, "is a directory, not a dump"),
    errno.EACCES: (PERMISSION, "permission denied"),
    errno.EPERM: (PERMISSION, "permission denied"),
}
_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _os_error(shown: str, e: OSError, doing: str = "cannot open") -> TargetError:
    kind, text = _OPEN_ERRORS.get(e.errno or 0, (DATA, f"{doing}: {e.strerror or e}"))
    return TargetError(kind, f"{shown}: {one_line(text)}")


def _sniff(path: str) -> str:
    """Dump format from the magic bytes, refusing what drgn would misread.

    The file is opened without blocking (a FIFO has no writer) and must be a regular file
    (a FIFO or a device would block or never end); every way the open or the first reads
    fail ends in a ``TargetError`` with one line."""
    shown = one_line(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise _os_error(shown, e) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise TargetError(NOINPUT, f"{shown}: is a directory, not a dump")
        what = next((name for test, name in _NOT_REGULAR if test(st.st_mode)), None)
        if what is not None or not stat.S_ISREG(st.st_mode):
            raise TargetError(DATA, f"{shown}: not a regular file ({what or 'special file'}); "
                                    "a dump must be a file")
        try:
            head = os.pread(fd, 64, 0)
            if head.startswith(b"makedumpfile"):
                raise TargetError(DATA, f"{shown}: makedumpfile flattened format; reassemble "
                                        f"it first: makedumpfile -R OUT < {shown}")
            if head.startswith(b"KDUMP   "):
                return "kdump"
            if head.startswith(b"\x7fELF"):
                _check_elf_size(shown, head, st.st_size, lambda off, n: os.pread(fd, n, off))
                return "elf"
        except OSError as e:
            raise _os_error(shown, e, "cannot read") from None
    finally:
        os.close(fd)
    raise TargetError(DATA, f"{shown}: not a kernel dump (neither ELF nor kdump-compressed)")


# ELF layout per class (e_ident[EI_CLASS]): header size, where e_phoff / e_shoff and the
# (entsize, num) pairs sit, the smallest program / section header, and the fields read.
_ELF = {
    2: dict(ehsize=64, phoff=(0x20, "Q"), shoff=(0x28, "Q"), ph=0x36, sh=0x3A, phmin=56,
            shmin=64, sh_info=44, phdr="I4xQ16xQ"),      # p_type, p_offset, p_filesz
    1: dict(ehsize=52, phoff=(0x1C, "I"), shoff=(0x20, "I"), ph=0x2A, sh=0x2E, phmin=32,
            shmin=40, sh_info=28, phdr="II8xI"),
}
_PN_XNUM = 0xFFFF          # e_phnum escape: the real count is section header 0's sh_info
_MAX_PHNUM = 1 << 24       # 16 Mi segments (~900 MiB of headers): no dump has that many
_PH_CHUNK = 4096           # program headers decoded per read (bounded memory)


def _check_elf_size(path: str, eh: bytes, size: int, read_at=None) -> None:
    """A truncated ELF core would read as zeros or fault at random; refuse it up front.

    Every header value is checked against the file before it is used: offsets beyond the
    file (or 2^63 and up), header sizes smaller than the structure, counts whose product
    passes the file; a ``TargetError(DATA)`` names the bad value.  ``read_at(off, n)``
    reads the file (default: open ``path`` again)."""
    if read_at is None:
        def read_at(off: int, n: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(off)
                return f.read(n)
    if len(eh) < 64:
        raise TargetError(DATA, f"{path}: ELF file but not a core dump (truncated header)")
    lay = _ELF.get(eh[4])
    end = {1: "<", 2: ">"}.get(eh[5])
    if lay is None or end is None:
        raise TargetError(DATA, f"{path}: ELF file of unknown class or byte order "
                                f"(EI_CLASS {eh[4]}, EI_DATA {eh[5]})")
    if struct.unpack_from(end + "H", eh, 16)[0] != 4:
        raise TargetError(DATA, f"{path}: ELF file but not a core dump")
    phoff, = struct.unpack_from(end + lay["phoff"][1], eh, lay["phoff"][0])
    phentsize, phnum = struct.unpack_from(end + "HH", eh, lay["ph"])
    if phnum == _PN_XNUM:
        phnum = _extended_phnum(path, eh, size, lay, end, read_at)
    if phnum == 0:
        return                  # no segments: drgn says it is not a kernel's core
    if phentsize < lay["phmin"]:
        raise TargetError(DATA, f"{path}: corrupt ELF header: program header size {phentsize} "
                                f"(a program header is {lay['phmin']} bytes)")
    if phnum > _MAX_PHNUM:
        raise TargetError(DATA, f"{path}: corrupt ELF header: {phnum} program headers")
    if phoff >= size or phoff + phnum * phentsize > size:
        raise TargetError(DATA, f"{path}: truncated (program headers cut off: {phnum} x "
                                f"{phentsize} bytes at offset {phoff}, file has {size})")
    rec = struct.Struct(end + lay["phdr"] + f"{phentsize - struct.calcsize(lay['phdr'])}x")
    need = 0
    for first in range(0, phnum, _PH_CHUNK):
        n = min(_PH_CHUNK, phnum - first)
        ph = read_at(phoff + first * phentsize, n * phentsize)
        if len(ph) < n * phentsize:
            raise TargetError(DATA, f"{path}: truncated (program headers cut off)")
        for p_type, off, filesz in rec.iter_unpack(ph):
            if p_type in (1, 4):  # PT_LOAD, PT_NOTE
                need = max(need, off + filesz)
    if need > size:
        raise TargetError(DATA, f"{path}: truncated: segments need {need} bytes, file has {size}")


def _extended_phnum(path: str, eh: bytes, size: int, lay: dict, end: str, read_at) -> int:
    """The program header count of a file with more than 65534 (``PN_XNUM``): section
    header 0's ``sh_info``; without section headers 65535 itself, as libelf reads it."""
    shoff, = struct.unpack_from(end + lay["shoff"][1], eh, lay["shoff"][0])
    shentsize, = struct.unpack_from(end + "H", eh, lay["sh"])
    if shoff == 0:
        return _PN_XNUM
    if shentsize < lay["shmin"] or shoff + shentsize > size:
        raise TargetError(DATA, f"{path}: corrupt ELF header: e_phnum is PN_XNUM but section "
                                f"header 0 (offset {shoff}, size {shentsize}) is not in the file")
    sh = read_at(shoff, shentsize)
    if len(sh) < shentsize:
        raise TargetError(DATA, f"{path}: truncated (section header 0 cut off)")
    return struct.unpack_from(end + "I", sh, lay["sh_info"])[0]


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
    except OSError as e:
        raise _os_error(one_line(path), e, "cannot read as a kernel dump") from None
    except Exception as e:  # ValueError, drgn.BadDataError (VMCOREINFO), libelf's Exception
        raise TargetError(DATA, f"{one_line(path)}: cannot read as a kernel dump: "
                                f"{_cause(e)}") from None
    if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
        raise TargetError(DATA, f"{one_line(path)}: a core dump, but not of a Linux kernel "
                                "(no VMCOREINFO)")
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
    except OSError as e:
        raise _os_error(KCORE, e) from None
    except Exception as e:  # ValueError, drgn.BadDataError (VMCOREINFO), libelf's Exception
        raise TargetError(DATA, f"{KCORE}: cannot open: {_cause(e)}") from None
    info, bid = _load(prog, _request(vmlinux, req), True)
    return Target(prog, KCORE, True, "live", _dwarf_path(info), bid, info)


def open_target(vmcore: Optional[str], vmlinux: Optional[str] = None,
                req: Optional[Request] = None) -> Target:
    """The dump at ``vmcore`` if given (an empty path is refused), else the running kernel."""
    if vmcore is None:
        return open_live(vmlinux, req)
    if not vmcore:
        raise TargetError(NOINPUT, "--vmcore: empty path")
    return open_vmcore(vmcore, vmlinux, req)


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
