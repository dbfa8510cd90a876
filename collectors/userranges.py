"""Ranges a user configures in a TOML file (``--ranges FILE``).

Format (documented in the README)::

    [[range]]
    name = "bmc-mailbox"          # required, unique
    start = 0xfed40000            # physical start, required
    size = "16KiB"                # bytes or a string with KiB/MiB/GiB/TiB, required
    mms = ["init_mm", "efi_mm"]   # default: both ("kernel"/"efi" accepted)
    va = "direct"                 # direct | identity | efi_va, or a table per mm:
                                  # va = { init_mm = "direct", efi_mm = ["identity", "efi_va"] }
    cache = "UC"                  # WB WC UC- UC WT WP, "uncached", "any", or a list
    writable = true               # optional
    executable = false            # optional
    required = true               # false: report as information only

Every mistake is reported as one line naming the file, the range and the field.
"""
from __future__ import annotations

import errno
import os
import re
import reprlib
import stat
import tomllib
from pathlib import Path
from typing import Any, Callable, Optional

from .kernel import KernelFacts
from .mm import EFI_MM, INIT_MM, MM_ALIASES
from .ranges import (DIRECT, EFI_VA, IDENTITY, PHYS_LIMIT, VA_RULES, Expectation, Range,
                     cache_set, va_for, va_span_problem)
from .errors import DATA, NOINPUT, RangesError, one_line
from .vocab import SOURCE_CONFIG

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TIB": 1 << 40}
_KNOWN = {"name", "start", "size", "mms", "va", "cache", "writable", "executable", "required"}
MAX_BYTES = 1 << 20          # a ranges file larger than this is refused, not read
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG)
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 2, 40, 40, 4, 4


def _show(v: Any) -> str:
    """A value from the file, shown briefly (bounded length and depth, whatever it is)."""
    return one_line(_repr.repr(v), 80)


def parse_size(v: Any) -> int:
    """Bytes from an integer or a string such as ``"2MiB"`` / ``"0x200000"``."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and len(v) <= 64:
        m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*([A-Za-z]*)\s*", v)
        if m and m.group(2).upper() in _UNITS:
            return int(m.group(1), 0) * _UNITS[m.group(2).upper()]
    raise ValueError(f"not a size: {_show(v)}")


def _int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and len(v) <= 64:
        try:
            return int(v, 0)
        except ValueError:
            pass
    raise ValueError(f"not an integer: {_show(v)}")


def _rule_list(v: Any, what: str) -> list[str]:
    """One VA rule or a non-empty list of them."""
    rules = [v] if isinstance(v, str) else v
    if not isinstance(rules, list) or not rules:
        raise ValueError(f"{what} must be a rule or a non-empty list of rules "
                         f"({', '.join(VA_RULES)}), not {_show(v)}")
    for r in rules:
        if r not in VA_RULES:
            raise ValueError(f"{what}: unknown rule {_show(r)} (use {', '.join(VA_RULES)})")
    return list(dict.fromkeys(rules))


def _rules_per_mm(va: Any, mms: list[str], mms_given: bool) -> dict[str, list[str]]:
    if isinstance(va, dict):
        if not va:
            raise ValueError("va: an empty table names no mm (give init_mm and/or efi_mm)")
        out = {}
        for k, v in va.items():
            mm = MM_ALIASES.get(k)
            if mm is None:
                raise ValueError(f"va: unknown mm {_show(k)}")
            if mm in out:
                raise ValueError(f"va: {mm} given twice")
            out[mm] = _rule_list(v, f"va.{k}")
        if mms_given and set(out) != set(mms):
            raise ValueError(f"va table names {', '.join(sorted(out))} but mms lists "
                             f"{', '.join(sorted(set(mms)))}")
        return out
    rules = _rule_list(va, "va")
    return {mm: rules for mm in mms}


def _read(path: Path) -> str:
    """The file's text: a regular file of at most ``MAX_BYTES``, opened without blocking
    (a FIFO without a writer) and never read past that bound (``/dev/zero``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise RangesError(f"{path}: cannot read: {e.strerror or e}",
                          NOINPUT if e.errno in _MISSING else DATA) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise RangesError(f"{path}: cannot read: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise RangesError(f"{path}: not a regular file (a FIFO, device or socket)")
        if st.st_size > MAX_BYTES:
            raise RangesError(f"{path}: too large ({st.st_size} bytes; at most {MAX_BYTES})")
        chunks, n = [], 0
        while n <= MAX_BYTES:
            b = os.read(fd, MAX_BYTES + 1 - n)
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > MAX_BYTES:
            raise RangesError(f"{path}: too large (more than {MAX_BYTES} bytes)")
    except OSError as e:
        raise RangesError(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise RangesError(f"{path}: not valid TOML: {e}") from None


def load(path: Path) -> list[dict[str, Any]]:
    """Parse and validate the file into plain specs (no kernel needed: fail early)."""
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise RangesError(f"{path}: not valid TOML: nested too deeply") from None
    except ValueError as e:         # TOMLDecodeError, or an integer of too many digits
        raise RangesError(f"{path}: not valid TOML: {e}") from None
    items = data.get("range", [])
    if not isinstance(items, list) or set(data) - {"range"}:
        raise RangesError(f"{path}: expected only [[range]] tables")
    specs, names = [], set()
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise RangesError(f"{path}: range {i}: not a table ({_show(item)}); "
                              "write each range as a [[range]] table")
        where = f"{path}: range {i}" + (f" ({_show(item['name'])})" if "name" in item else "")
        try:
            spec = _spec(item)
        except (ValueError, TypeError, RecursionError) as e:
            raise RangesError(f"{where}: {e}") from None
        if spec["name"] in names:
            raise RangesError(f"{where}: duplicate name")
        names.add(spec["name"])
        spec["where"] = where
        specs.append(spec)
    return specs


def _spec(item: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(item) - _KNOWN)
    if unknown:
        raise ValueError(f"unknown field {_show(unknown[0])}")
    for f in ("name", "start", "size"):
        if f not in item:
            raise ValueError(f"missing field {f!r}")
    name = item["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
        raise ValueError("name must be 1-64 characters of letters, digits, _ . : -")
    start, size = _int(item["start"]), parse_size(item["size"])
    if start < 0 or size <= 0 or start + size > PHYS_LIMIT:
        raise ValueError("start/size must describe a non-empty range below 4 PiB "
                         "(x86-64 physical addresses have at most 52 bits)")
    if start % 4096 or size % 4096:
        raise ValueError("start and size must be 4 KiB aligned")
    given = item.get("mms", [INIT_MM, EFI_MM])
    if not isinstance(given, list) or not given or not all(isinstance(m, str) for m in given) \
            or None in (mms := [MM_ALIASES.get(m) for m in given]):
        raise ValueError("mms must list init_mm/kernel and/or efi_mm/efi")
    mms = list(dict.fromkeys(mms))
    rules = _rules_per_mm(item.get("va", DIRECT), mms, "mms" in item)
    for f in ("writable", "executable", "required"):
        if f in item and not isinstance(item[f], bool):
            raise ValueError(f"{f} must be true or false")
    return {"name": name, "start": start, "size": size, "rules": rules,
            "cache": cache_set(item.get("cache", "any")), "writable": item.get("writable"),
            "executable": item.get("executable"), "required": item.get("required", True)}


def to_ranges(specs: list[dict[str, Any]], facts: KernelFacts,
              efi_va_of: Callable[[int], Optional[int]]) -> list[Range]:
    """Turn validated specs into ``Range``s for one kernel (VA rules need its facts).

    A VA range this kernel cannot have (past 2^64, or across the non-canonical hole of its
    paging depth) is refused with a ``RangesError``.  A rule ``efi_va`` for a range no EFI
    runtime descriptor covers cannot hold: it is still an expectation (a required one is a
    finding), marked ``unmet`` with the reason, which the checker reports without a walk
    (its ``va`` is only the 1:1 stand-in)."""
    out = []
    for s in specs:
        exps = []
        where = s.get("where", f"range {s['name']!r}")
        for mm, rules in s["rules"].items():
            for rule in rules:
                unmet, cache = "", s["cache"]
                if rule == EFI_VA:
                    efi_va = efi_va_of(s["start"])
                    if efi_va is None:
                        unmet = (f"no EFI runtime descriptor covers PA 0x{s['start']:x}, so "
                                 "the firmware has no EFI VA for it")
                    elif va_span_problem(efi_va, s["size"], facts.levels):
                        unmet = (f"the EFI runtime descriptor covering PA 0x{s['start']:x} "
                                 f"gives EFI VA 0x{efi_va:x}, which "
                                 f"{va_span_problem(efi_va, s['size'], facts.levels)}")
                    if unmet:
                        va, cache = va_for(IDENTITY, s["start"], facts), frozenset()
                    else:
                        va = va_for(EFI_VA, s["start"], facts, efi_va)
                else:
                    va = va_for(rule, s["start"], facts)
                bad = va_span_problem(va, s["size"], facts.levels)
                if bad:
                    raise RangesError(
                        f"{where}: the {rule} VA range 0x{va:x}+0x{s['size']:x} {bad}"
                        + (f" ({unmet})" if unmet else "")
                        + f": x86-64 cannot map it in {mm}")
                exps.append(Expectation(
                    mm, rule, va, cache, s["writable"], s["executable"], s["required"],
                    shared_from=INIT_MM if (mm == EFI_MM and rule == DIRECT) else None,
                    why=unmet or "configured in the ranges file", unmet=unmet))
        out.append(Range(s["name"], s["start"], s["size"], SOURCE_CONFIG, "configured",
                         expectations=tuple(exps)))
    return out
