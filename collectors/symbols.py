"""Kernel symbols without DWARF: kallsyms in memory, ``/proc/kallsyms``, or a System.map.

Which needs what:

* **kallsyms in memory** (``SYMBOL(kallsyms_*)`` in VMCOREINFO, Linux 6.0+, commit
  f09bddbd8661 "vmcoreinfo: add kallsyms_num_syms symbol"): drgn decodes the kernel's own
  compressed table from the dump or ``/proc/kcore``.  Needs nothing beyond what reading
  the target needs (CAP_SYS_RAWIO for /proc/kcore), so the daemon prefers it.
* **/proc/kallsyms**: the running kernel before 6.0.  Real addresses only for readers with
  CAP_SYSLOG when ``kptr_restrict`` is 1 or ``perf_event_paranoid`` > 1 (Debian's
  default is 3); otherwise every address reads 0, which is refused here, not used.
* **System.map** (``--system-map``): dumps of kernels before 6.0.  Link-time addresses,
  moved by the dump's ``KERNELOFFSET`` (KASLR); percpu symbols (below the kernel map) are
  offsets and stay.  A map of another build is refused by comparing it with every
  ``SYMBOL()`` the kernel wrote into VMCOREINFO.
"""
from __future__ import annotations

import os
from array import array
from dataclasses import dataclass
from typing import Callable, Optional

import drgn

from .errors import TargetError, one_line
from .x86 import START_KERNEL_MAP

PROC_KALLSYMS = "/proc/kallsyms"
_KALLSYMS_VMCOREINFO = "SYMBOL(kallsyms_num_syms)"
MAX_MAP = 256 << 20
# what drgn's register_symbol_finder() takes: (prog, name, address, one) -> [Symbol]
SymbolFinder = Callable[[drgn.Program, Optional[str], Optional[int], bool], list]


class SymbolError(TargetError):
    """No usable symbols (kind: noinput, data, debuginfo or permission)."""


@dataclass(frozen=True)
class SymbolSource:
    """Where the symbols came from, for reports and the info metric."""

    kind: str          # "kallsyms" | "proc-kallsyms" | "system-map"
    path: str          # the file, or "(in memory)"


def vmcoreinfo_symbols(vmcoreinfo: dict[str, str]) -> dict[str, int]:
    """``SYMBOL(name)=hex`` entries: runtime addresses the kernel wrote itself."""
    out = {}
    for k, v in vmcoreinfo.items():
        if k.startswith("SYMBOL(") and k.endswith(")"):
            try:
                out[k[7:-1]] = int(v, 16)
            except ValueError:
                continue
    return out


def has_builtin_kallsyms(vmcoreinfo: dict[str, str]) -> bool:
    return _KALLSYMS_VMCOREINFO in vmcoreinfo


def load_builtin(prog: drgn.Program, vmcoreinfo: dict[str, str]) -> drgn.SymbolIndex:
    """drgn's decoder of the kernel's own kallsyms tables (located through VMCOREINFO)."""
    from _drgn import _linux_helper_load_builtin_kallsyms
    syms = vmcoreinfo_symbols(vmcoreinfo)
    names = ("kallsyms_names", "kallsyms_token_table", "kallsyms_token_index",
             "kallsyms_num_syms", "kallsyms_offsets", "kallsyms_relative_base",
             "kallsyms_addresses", "_stext")
    try:
        return _linux_helper_load_builtin_kallsyms(prog, *(syms.get(n, 0) for n in names))
    except (drgn.FaultError, drgn.BadDataError, drgn.MissingDebugInfoError, ValueError,
            OverflowError, MemoryError, LookupError) as e:
        # BadDataError: a garbage table; MissingDebugInfoError: a VMCOREINFO location of
        # one of the tables that is missing or 0 (drgn's words for "not usable")
        raise SymbolError("data", f"kallsyms in memory unreadable: {one_line(e, 200)}") from None


def load_proc(path: str = PROC_KALLSYMS) -> drgn.SymbolIndex:
    """``/proc/kallsyms`` of the running kernel, refused when its addresses are hidden."""
    from _drgn import _linux_helper_load_proc_kallsyms
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        raise SymbolError("noinput", f"{path}: not present (kernel without CONFIG_KALLSYMS)") \
            from None
    except PermissionError:
        raise SymbolError("permission", f"{path}: permission denied") from None
    # hidden, every address reads 0; the first few are per-CPU offsets and may be 0 anyway
    addrs = [ln.split(b" ", 1)[0] for ln in head.split(b"\n")[:-1]]
    if not addrs or all(a.strip(b"0") == b"" for a in addrs):
        raise SymbolError("permission", f"{path}: addresses are hidden (kptr_restrict/"
                          "perf_event_paranoid): reading them needs CAP_SYSLOG")
    try:
        return _linux_helper_load_proc_kallsyms(path, False)
    except (OSError, ValueError) as e:
        raise SymbolError("data", f"{path}: unreadable: {one_line(e, 200)}") from None


def _read_map(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SymbolError("noinput", f"{path}: no such file") from None
    except PermissionError:
        raise SymbolError("permission", f"{path}: permission denied") from None
    except OSError as e:
        raise SymbolError("noinput", f"{path}: cannot open: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        import stat
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise SymbolError("data", f"{path}: not a regular file")
        data = f.read(MAX_MAP + 1)
    if len(data) > MAX_MAP:
        raise SymbolError("data", f"{path}: over {MAX_MAP >> 20} MiB: not a System.map")
    return data


class SystemMapTable:
    """A System.map searched on demand (drgn symbol-finder callback ``find``).

    The map is sorted by address (``nm -n``), so a symbol's size is the distance to the next
    line and an address lookup is a binary search over lines, built on first use only.
    Addresses in the kernel image are moved by the dump's KASLR offset."""

    def __init__(self, data: bytes, offset: int) -> None:
        self._data = data if data.endswith(b"\n") else data + b"\n"
        self._offset = offset
        self._by_name: dict[str, list[int]] = {}
        self._lines: Optional[array] = None

    def _line(self, pos: int) -> tuple[int, str, str, int]:
        """(moved address, nm type, name, next line's position) of the line at ``pos``."""
        end = self._data.index(b"\n", pos)
        parts = self._data[pos:end].split()
        try:
            if len(parts) < 3 or len(parts[1]) != 1 or not parts[0].isalnum():
                raise ValueError
            addr, typ = int(parts[0], 16), parts[1].decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise ValueError("not a System.map line") from None
        if addr >= START_KERNEL_MAP:
            addr = (addr + self._offset) & 0xFFFFFFFFFFFFFFFF
        return addr, typ, parts[2].decode("ascii", "replace"), end + 1

    def lookup(self, name: str) -> list[int]:
        """Line positions of the symbols called ``name``."""
        hit = self._by_name.get(name)
        if hit is None:
            d, needle, hit = self._data, b" " + name.encode() + b"\n", []
            pos = d.find(needle)
            while pos >= 0:
                start = d.rfind(b"\n", 0, pos) + 1
                if pos - start >= 3 and d[pos - 2] == 32 and self._parses(start):  # ADDR t name
                    hit.append(start)
                pos = d.find(needle, pos + 1)
            self._by_name[name] = hit
        return hit

    def _parses(self, pos: int) -> bool:
        """Garbage lines are no symbols (a corrupt map must not break a lookup)."""
        try:
            self._line(pos)
            return True
        except ValueError:
            return False

    def address(self, name: str) -> Optional[int]:
        hit = self.lookup(name)
        return self._line(hit[0])[0] if hit else None

    def _symbol(self, pos: int) -> drgn.Symbol:
        from drgn.helpers.linux.kallsyms import _nm_type_to_binding_kind
        addr, typ, name, nxt = self._line(pos)
        size = 0
        if nxt < len(self._data):
            try:
                size = max(self._line(nxt)[0] - addr, 0)
            except ValueError:
                pass
        binding, kind = _nm_type_to_binding_kind(typ)
        return drgn.Symbol(name, addr, size, binding, kind)

    def _all_lines(self) -> array:
        if self._lines is None:
            d, out, pos = self._data, array("Q"), 0
            while pos < len(d):
                out.append(pos)
                pos = d.index(b"\n", pos) + 1
            self._lines = out
        return self._lines

    def find(self, prog: drgn.Program, name: Optional[str], address: Optional[int],
             one: bool) -> list[drgn.Symbol]:
        if name is not None:
            out = [self._symbol(p) for p in self.lookup(name)]
        else:
            out = [self._symbol(p) for p in self._all_lines() if self._parses(p)]
        if address is not None:
            out = [x for x in out if x.address <= address < x.address + max(x.size, 1)]
        return out[:1] if one else out

    __call__ = find


def load_system_map(path: str, vmcoreinfo: dict[str, str]) -> SystemMapTable:
    """A System.map moved by KERNELOFFSET and checked against VMCOREINFO's symbols."""
    data = _read_map(path)
    if not data.strip():
        raise SymbolError("data", f"{path}: empty")
    if data.count(b"\n") <= 2 and b"System.map is in" in data:
        raise SymbolError("data", f"{path}: a placeholder (Debian ships the real System.map in "
                          "the linux-image-<version>-dbg package)")
    try:
        offset = int(vmcoreinfo.get("KERNELOFFSET", "0"), 16)
    except ValueError:
        raise SymbolError("data", "VMCOREINFO KERNELOFFSET is not a number") from None
    # a System.map has link-time addresses (moved by KASLR's offset); a copy of this boot's
    # /proc/kallsyms (the kallsyms drop-in's) has them moved already
    first: Optional[SymbolError] = None
    for off in dict.fromkeys((offset, 0)):
        table = SystemMapTable(data, off)
        if not table._parses(0):
            raise SymbolError("data", f"{path}:1: not a System.map line")
        try:
            check_symbols(path, table.address, vmcoreinfo)
            return table
        except SymbolError as e:
            first = first or e
    raise first  # type: ignore[misc]


def check_symbols(path: str, address_of: Callable[[str], Optional[int]],
                  vmcoreinfo: dict[str, str]) -> None:
    """Refuse a symbol table whose symbols are not where this kernel says its own are."""
    # SYMBOL() is an address for symbols in the image; VMCOREINFO_SYMBOL_ARRAY() of a
    # pointer (mem_section with SPARSEMEM_EXTREME) is the pointer's value: not comparable
    known = {n: a for n, a in vmcoreinfo_symbols(vmcoreinfo).items() if a >= START_KERNEL_MAP}
    have = {n: address_of(n) for n in known}
    common = [n for n in known if have[n] is not None]
    if not common:
        raise SymbolError("debuginfo", f"{path}: shares no symbol with the kernel's VMCOREINFO: "
                          "not this kernel's symbols")
    for n in common:
        if have[n] != known[n]:
            raise SymbolError("debuginfo", f"{path}: does not belong to this kernel: {n} is at "
                              f"0x{have[n]:x} by the map (with KASLR offset), 0x{known[n]:x} "
                              "by the kernel")
