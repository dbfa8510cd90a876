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
from dataclasses import dataclass

import drgn

from .btf import MAX_BLOB
from .errors import TargetError

START_KERNEL_MAP = 0xFFFFFFFF80000000
PROC_KALLSYMS = "/proc/kallsyms"
_KALLSYMS_VMCOREINFO = "SYMBOL(kallsyms_num_syms)"
MAX_MAP = 256 << 20


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
    except (drgn.FaultError, ValueError, OverflowError, LookupError) as e:
        raise SymbolError("data", f"kallsyms in memory unreadable: {str(e).splitlines()[0]}") \
            from None


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
        raise SymbolError("data", f"{path}: unreadable: {str(e).splitlines()[0]}") from None


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


def parse_system_map(data: bytes, path: str) -> list[tuple[int, str, str]]:
    """(address, nm type, name) of each line; bad lines are an error, not skipped."""
    out = []
    for no, line in enumerate(data.splitlines(), 1):
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) != 1:
            if not parts:
                continue
            raise SymbolError("data", f"{path}:{no}: not a System.map line")
        try:
            out.append((int(parts[0], 16), parts[1].decode("ascii"),
                        parts[2].decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            raise SymbolError("data", f"{path}:{no}: not a System.map line") from None
    return out


def load_system_map(path: str, vmcoreinfo: dict[str, str]) -> drgn.SymbolIndex:
    """A System.map moved by KERNELOFFSET and checked against VMCOREINFO's symbols."""
    entries = parse_system_map(_read_map(path), path)
    if len(entries) <= 2 and any("System.map is in" in n or n == "The" for _, _, n in entries):
        raise SymbolError("data", f"{path}: a placeholder (Debian ships the real System.map in "
                          "the linux-image-<version>-dbg package)")
    if not entries:
        raise SymbolError("data", f"{path}: empty")
    try:
        offset = int(vmcoreinfo.get("KERNELOFFSET", "0"), 16)
    except ValueError:
        raise SymbolError("data", "VMCOREINFO KERNELOFFSET is not a number") from None

    def moved(addr: int) -> int:
        return addr + offset if addr >= START_KERNEL_MAP else addr
    _check_map(path, {n: moved(a) for a, _, n in entries}, vmcoreinfo)
    return _index([(moved(a), t, n) for a, t, n in entries])


def _check_map(path: str, addrs: dict[str, int], vmcoreinfo: dict[str, str]) -> None:
    """Refuse a map whose symbols are not where this kernel says its own are."""
    # SYMBOL() is an address for symbols in the image; VMCOREINFO_SYMBOL_ARRAY() of a
    # pointer (mem_section with SPARSEMEM_EXTREME) is the pointer's value: not comparable
    known = {n: a for n, a in vmcoreinfo_symbols(vmcoreinfo).items() if a >= START_KERNEL_MAP}
    common = [n for n in known if n in addrs]
    if not common:
        raise SymbolError("debuginfo", f"{path}: shares no symbol with the kernel's VMCOREINFO: "
                          "not this kernel's System.map")
    for n in common:
        if addrs[n] != known[n]:
            raise SymbolError("debuginfo", f"{path}: does not belong to this kernel: {n} is at "
                              f"0x{addrs[n]:x} by the map (with KASLR offset), 0x{known[n]:x} "
                              "by the kernel")


def _index(entries: list[tuple[int, str, str]]) -> drgn.SymbolIndex:
    """A drgn symbol index; a symbol's size is the distance to the next one (as kallsyms)."""
    from drgn.helpers.linux.kallsyms import _nm_type_to_binding_kind
    entries.sort()
    syms = []
    for i, (addr, typ, name) in enumerate(entries):
        nxt = next((a for a, _, _ in entries[i + 1:i + 8] if a > addr), addr)
        binding, kind = _nm_type_to_binding_kind(typ)
        syms.append(drgn.Symbol(name, addr, nxt - addr, binding, kind))
    return drgn.SymbolIndex(syms)


def btf_bounds(prog: drgn.Program) -> tuple[int, int]:
    """``__start_BTF`` .. ``__stop_BTF``: the kernel's BTF in its own image."""
    try:
        start = prog.symbol("__start_BTF").address
        stop = prog.symbol("__stop_BTF").address
    except LookupError:
        raise SymbolError("debuginfo", "the kernel has no __start_BTF/__stop_BTF symbols "
                          "(built without CONFIG_DEBUG_INFO_BTF)") from None
    if not 0 < stop - start <= MAX_BLOB:
        raise SymbolError("data", f"__start_BTF..__stop_BTF spans {stop - start} bytes: corrupt")
    return start, stop
