"""Where a target's types and symbols come from: DWARF, or BTF + kallsyms / System.map.

DWARF (the vmlinux of the kernel's debug package) answers everything but costs a 360-680 MB
file and ~200 MiB of drgn index.  Distribution kernels carry the same layouts in BTF and
their symbols in kallsyms, so by default (``auto``) mmrwatch uses those and falls back to
DWARF only when one is missing; ``--vmlinux`` asks for DWARF, ``--debug-info btf|dwarf``
forces either.  Both paths end with drgn answering ``prog["efi_mm"]`` and
``prog.type("struct uv_hub_info_s")``: the collectors do not know which one is behind.

Both refuse what does not belong to the kernel: a vmlinux by build-id, a BTF blob by the
struct sizes and member offsets the kernel itself wrote into VMCOREINFO, a System.map by
the symbol addresses there (``symbols``).
"""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import drgn

from . import btf, kallsyms, symbols
from .btftypes import BTFTypes
from .errors import DATA, DEBUGINFO, NOINPUT, PERMISSION, TargetError, one_line
from .kglobals import KernelObjects

AUTO, DWARF, BTF = "auto", "dwarf", "btf"
MODES = (AUTO, DWARF, BTF)
SYS_BTF = "/sys/kernel/btf/vmlinux"
IN_DUMP = "(in the kernel image: __start_BTF)"


@dataclass(frozen=True)
class Request:
    """What the user asked for (CLI flags / daemon options)."""

    mode: str = AUTO
    vmlinux: Optional[str] = None
    btf: Optional[str] = None
    system_map: Optional[str] = None


@dataclass(frozen=True)
class DebugInfo:
    """What was loaded, for reports and the daemon's info metric."""

    types: str              # "dwarf" | "btf"
    types_path: str
    symbols: str            # "dwarf" | "kallsyms" | "proc-kallsyms" | "system-map"
    symbols_path: str

    def describe(self) -> str:
        if self.types == DWARF:
            return f"DWARF {self.types_path}"
        return f"BTF {self.types_path}, symbols from {self.symbols} {self.symbols_path}"


def vmcoreinfo(prog: drgn.Program) -> dict[str, str]:
    try:
        raw = prog["VMCOREINFO"].string_().decode(errors="replace")
    except (KeyError, LookupError, drgn.FaultError):
        return {}
    return dict(ln.split("=", 1) for ln in raw.splitlines() if "=" in ln)


def load(prog: drgn.Program, req: Request, live: bool) -> DebugInfo:
    """Load types and symbols into ``prog`` as ``req`` asks; TargetError when impossible."""
    vmci = vmcoreinfo(prog)
    if req.mode == DWARF or (req.mode == AUTO and req.vmlinux):
        return load_dwarf(prog, req.vmlinux, vmci)
    if req.mode == BTF:
        return load_btf(prog, req, live, vmci)
    try:
        return load_btf(prog, req, live, vmci)
    except TargetError as no_btf:
        if req.btf or req.system_map:
            raise                      # the user pointed at them: their error is the answer
        try:
            return load_dwarf(prog, None, vmci)
        except TargetError as no_dwarf:
            if no_dwarf.kind != DEBUGINFO or "no debug info" not in str(no_dwarf):
                raise
            raise TargetError(no_btf.kind, f"{no_btf}, and no vmlinux in the standard places: "
                                           f"{_how_to(vmci, live)}") from None


def _how_to(vmci: dict[str, str], live: bool) -> str:
    """The remedy, in the user's terms (which file, from which package)."""
    if not symbols.has_builtin_kallsyms(vmci):
        if live:
            return ("run with CAP_SYSLOG, or pass --system-map with a copy of /proc/kallsyms "
                    "taken as root (systemd/mmrwatch-kallsyms.conf does), or --vmlinux PATH")
        return ("pass --system-map PATH (RHEL/SLES: /boot/System.map-RELEASE; Debian: the "
                "linux-image-RELEASE-dbg package) or --vmlinux PATH")
    return "pass --btf PATH, or --vmlinux PATH (the kernel's debug package)"


# --- BTF + kallsyms -------------------------------------------------------------------
def load_btf(prog: drgn.Program, req: Request, live: bool, vmci: dict[str, str]) -> DebugInfo:
    """Symbols first (the BTF of a dump is found through them), then BTF, then checks."""
    index, skind, spath = _symbols(prog, req, live, vmci)
    if skind == "kallsyms":            # our own decoder: held to the kernel's own words too
        symbols.check_symbols("kallsyms in memory", lambda n: _sym(index, prog, n), vmci)
    blob, tpath = _btf_blob(prog, req, live, index)
    types = BTFTypes(prog, btf.BTF(blob, tpath))
    _check_layout(prog, types, vmci, tpath)
    prog.register_symbol_finder(SYMBOLS, index, enable_index=0)
    types.register()
    KernelObjects(types).register()
    try:
        _check_roots(prog, vmci, tpath)
    except TargetError:
        _unregister(prog)              # a DWARF fallback must not see half of this
        raise
    return DebugInfo(BTF, tpath, skind, spath)


SYMBOLS = "mmrwatch-kallsyms"


def _unregister(prog: drgn.Program) -> None:
    """Disable the finders load_btf() registered (drgn cannot remove a finder)."""
    from .btftypes import FINDER as TYPES
    from .kglobals import FINDER as OBJECTS
    prog.set_enabled_symbol_finders([n for n in prog.enabled_symbol_finders() if n != SYMBOLS])
    prog.set_enabled_type_finders([n for n in prog.enabled_type_finders() if n != TYPES])
    prog.set_enabled_object_finders([n for n in prog.enabled_object_finders() if n != OBJECTS])


def _symbols(prog: drgn.Program, req: Request, live: bool,
             vmci: dict[str, str]) -> tuple[symbols.SymbolFinder, str, str]:
    if req.system_map:
        return symbols.load_system_map(req.system_map, vmci), "system-map", req.system_map
    if symbols.has_builtin_kallsyms(vmci):
        return _kernel_kallsyms(prog, vmci), "kallsyms", "(in memory, via VMCOREINFO)"
    if live:
        return symbols.load_proc(), "proc-kallsyms", symbols.PROC_KALLSYMS
    raise TargetError(DEBUGINFO, f"no symbols for kernel {one_line(vmci.get('OSRELEASE', '?'), 80)}: its "
                      "VMCOREINFO has no kallsyms (Linux before 6.0)")


def _kernel_kallsyms(prog: drgn.Program, vmci: dict[str, str]):
    """mmrwatch's on-demand kallsyms table; drgn's full index for layouts it does not know."""
    try:
        table = kallsyms.decode(prog, symbols.vmcoreinfo_symbols(vmci))
    except (drgn.FaultError, ValueError, IndexError, OverflowError) as e:
        raise TargetError(DATA, f"kallsyms in memory unreadable: {one_line(e, 200)}") from None
    return table if table is not None else symbols.load_builtin(prog, vmci)


def _sym(index, prog: drgn.Program, name: str) -> Optional[int]:
    hits = index(prog, name, None, True)
    return hits[0].address if hits else None


def _btf_blob(prog: drgn.Program, req: Request, live: bool,
              index: symbols.SymbolFinder) -> tuple[bytes, str]:
    if req.btf:
        return read_btf_file(req.btf), req.btf
    if live and os.path.exists(SYS_BTF):
        return read_btf_file(SYS_BTF), SYS_BTF
    start, stop = _sym(index, prog, "__start_BTF"), _sym(index, prog, "__stop_BTF")
    if start is None or stop is None:
        raise TargetError(DEBUGINFO, "no BTF: the kernel has no __start_BTF/__stop_BTF "
                          "(built without CONFIG_DEBUG_INFO_BTF)")
    if not 0 < stop - start <= btf.MAX_BLOB:
        raise TargetError(DATA, f"__start_BTF..__stop_BTF spans {stop - start} bytes: corrupt")
    try:
        return prog.read(start, stop - start), IN_DUMP
    except drgn.FaultError as e:
        raise TargetError(DEBUGINFO, f"the kernel's BTF is not in the dump ({e})") from None


def read_btf_file(path: str) -> bytes:
    """A raw BTF file, or the .BTF section of an ELF (vmlinux); FIFOs and devices refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise TargetError(NOINPUT, f"{path}: no such file") from None
    except PermissionError:
        raise TargetError(PERMISSION, f"{path}: permission denied") from None
    except OSError as e:
        raise TargetError(NOINPUT, f"{path}: cannot open: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise TargetError(DATA, f"{path}: not a regular file")
        if f.read(4) == b"\x7fELF":
            f.seek(0)
            return btf.from_elf(f, path)
        f.seek(0)
        data = f.read(btf.MAX_BLOB + 1)
    if len(data) > btf.MAX_BLOB:
        raise TargetError(DATA, f"{path}: over {btf.MAX_BLOB >> 20} MiB: not kernel BTF")
    return data


def _check_layout(prog: drgn.Program, types: BTFTypes, vmci: dict[str, str], path: str) -> None:
    """Compare BTF with the SIZE()/OFFSET() facts the kernel wrote into VMCOREINFO."""
    def find(name: str) -> Optional[drgn.Type]:
        kinds = [(drgn.TypeKind.STRUCT,), (drgn.TypeKind.TYPEDEF,), (drgn.TypeKind.UNION,)]
        for k in kinds:
            t = types.find(prog, drgn.TypeKindSet(k), name, None)
            if t is not None:
                return t
        return None
    checked = candidates = 0
    for key, value in vmci.items():
        if not (key.startswith(("SIZE(", "OFFSET(")) and key.endswith(")")):
            continue
        candidates += 1
        what = key[key.index("(") + 1:-1]
        tname, _, member = what.partition(".")
        t = find(tname)
        try:
            want = int(value)
            got = drgn.offsetof(t, member) if member else drgn.sizeof(t)  # type: ignore
        except (ValueError, TypeError, LookupError):
            continue           # not in this BTF (or not a plain member path): not evidence
        checked += 1
        if got != want:
            raise TargetError(DEBUGINFO, f"{path}: BTF of another kernel: {key} is {got} in it, "
                              f"{want} in the kernel's VMCOREINFO")
    if candidates and not checked:
        raise TargetError(DEBUGINFO, f"{path}: shares no type with the kernel's VMCOREINFO: "
                          "not this kernel's BTF (a module's, or a BPF object's?)")


def _check_roots(prog: drgn.Program, vmci: dict[str, str], path: str) -> None:
    """``init_mm.pgd`` must be the ``swapper_pg_dir`` the kernel wrote into VMCOREINFO."""
    want = symbols.vmcoreinfo_symbols(vmci).get("swapper_pg_dir")
    try:
        got = prog["init_mm"].pgd.value_()
    except KeyError:
        raise TargetError(DEBUGINFO, "no init_mm symbol (kernel without CONFIG_KALLSYMS_ALL?): "
                          "pass --vmlinux PATH") from None
    except (LookupError, AttributeError, TypeError):   # a BTF without mm_struct.pgd
        raise TargetError(DEBUGINFO, f"{path}: BTF has no struct mm_struct with a pgd") from None
    except drgn.FaultError as e:
        raise TargetError(DATA, f"init_mm is not readable: {one_line(e, 200)}") from None
    if want is not None and got != want:
        raise TargetError(DEBUGINFO, f"{path} and the symbols do not match this kernel: init_mm.pgd "
                          f"reads 0x{got:x}, swapper_pg_dir is 0x{want:x}")


# --- DWARF ----------------------------------------------------------------------------
def debuginfo_candidates(release: str) -> list[Path]:
    """Where distributions put vmlinux for ``release`` (first match wins)."""
    return [Path(f"/usr/lib/debug/boot/vmlinux-{release}"),
            Path(f"/usr/lib/debug/lib/modules/{release}/vmlinux"),
            Path(f"/boot/vmlinux-{release}")]


def elf_build_id(path: Path) -> Optional[str]:
    """The GNU build-id note of an ELF file, as hex (None if it has none or is corrupt)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        eh = f.read(64)
        if len(eh) < 64 or eh[:4] != b"\x7fELF" or eh[4] != 2:
            return None
        shoff, = struct.unpack_from("<Q", eh, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", eh, 0x3A)
        if shentsize < 64 or shoff + shentsize * shnum > size:
            return None
        f.seek(shoff)
        shdrs = f.read(shentsize * shnum)
        for i in range(shnum):
            sh_type, = struct.unpack_from("<I", shdrs, i * shentsize + 4)
            if sh_type != 7:  # SHT_NOTE
                continue
            off, nsize = struct.unpack_from("<QQ", shdrs, i * shentsize + 0x18)
            if off >= size:
                continue
            f.seek(off)
            notes = f.read(min(nsize, 1 << 16))
            pos = 0
            while pos + 12 <= len(notes):
                nsz, dsz, typ = struct.unpack_from("<III", notes, pos)
                name = notes[pos + 12:pos + 12 + nsz]
                dpos = pos + 12 + ((nsz + 3) & ~3)
                if typ == 3 and name.rstrip(b"\0") == b"GNU":
                    return notes[dpos:dpos + dsz].hex() or None
                pos = dpos + ((dsz + 3) & ~3)
    return None


def load_dwarf(prog: drgn.Program, vmlinux: Optional[str], vmci: dict[str, str]) -> DebugInfo:
    """The vmlinux's DWARF, refused when its build-id is not the kernel's."""
    release = one_line(vmci.get("OSRELEASE", "?"), 80)
    kbid = vmci.get("BUILD-ID", "").strip() or None
    if vmlinux is None:
        found = [p for p in debuginfo_candidates(release) if p.exists()]
        if not found:
            looked = ", ".join(str(p) for p in debuginfo_candidates(release))
            raise TargetError(DEBUGINFO, f"no debug info for kernel {release}: pass --vmlinux "
                                         f"PATH (looked in {looked})")
        vmlinux = str(found[0])
    try:
        st = os.stat(vmlinux)
    except FileNotFoundError:
        raise TargetError(NOINPUT, f"{vmlinux}: no such file") from None
    except OSError as e:
        raise TargetError(NOINPUT, f"{vmlinux}: cannot open: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TargetError(DATA, f"{vmlinux}: not a regular file")
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
    return DebugInfo(DWARF, vmlinux, DWARF, vmlinux)
