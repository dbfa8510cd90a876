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

import re
import tomllib
from pathlib import Path
from typing import Any, Callable, Optional

from .kernel import KernelFacts
from .mm import EFI_MM, INIT_MM, MM_ALIASES
from .ranges import DIRECT, EFI_VA, VA_RULES, Expectation, Range, cache_set, va_for

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TIB": 1 << 40}
_KNOWN = {"name", "start", "size", "mms", "va", "cache", "writable", "executable", "required"}


class RangesError(ValueError):
    """A ranges file that cannot be used; the message is one line for the user."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing      # the file does not exist (vs. exists but is unusable)


def parse_size(v: Any) -> int:
    """Bytes from an integer or a string such as ``"2MiB"`` / ``"0x200000"``."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*([A-Za-z]*)\s*", v)
        if m and m.group(2).upper() in _UNITS:
            return int(m.group(1), 0) * _UNITS[m.group(2).upper()]
    raise ValueError(f"not a size: {v!r}")


def _int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        return int(v, 0)
    raise ValueError(f"not an integer: {v!r}")


def _rules_per_mm(va: Any, mms: list[str]) -> dict[str, list[str]]:
    if isinstance(va, dict):
        out = {}
        for k, v in va.items():
            mm = MM_ALIASES.get(k)
            if mm is None:
                raise ValueError(f"va: unknown mm {k!r}")
            out[mm] = [v] if isinstance(v, str) else list(v)
        return out
    rules = [va] if isinstance(va, str) else list(va)
    return {mm: rules for mm in mms}


def load(path: Path) -> list[dict[str, Any]]:
    """Parse and validate the file into plain specs (no kernel needed: fail early)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise RangesError(f"{path}: cannot read: {e.strerror}",
                          missing=isinstance(e, FileNotFoundError)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise RangesError(f"{path}: not valid TOML: {e}") from None
    items = data.get("range", [])
    if not isinstance(items, list) or set(data) - {"range"}:
        raise RangesError(f"{path}: expected only [[range]] tables")
    specs, names = [], set()
    for i, item in enumerate(items, 1):
        where = f"{path}: range {i}" + (f" ({item.get('name')!r})" if "name" in item else "")
        try:
            specs.append(_spec(item))
        except (ValueError, TypeError) as e:
            raise RangesError(f"{where}: {e}") from None
        if specs[-1]["name"] in names:
            raise RangesError(f"{where}: duplicate name")
        names.add(specs[-1]["name"])
    return specs


def _spec(item: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(item) - _KNOWN)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    for f in ("name", "start", "size"):
        if f not in item:
            raise ValueError(f"missing field {f!r}")
    name = item["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
        raise ValueError("name must be 1-64 characters of letters, digits, _ . : -")
    start, size = _int(item["start"]), parse_size(item["size"])
    if start < 0 or size <= 0 or start + size > 1 << 52:
        raise ValueError("start/size must describe a non-empty range below 4 PiB")
    if start % 4096 or size % 4096:
        raise ValueError("start and size must be 4 KiB aligned")
    mms = [MM_ALIASES.get(m) for m in item.get("mms", [INIT_MM, EFI_MM])]
    if None in mms or not mms:
        raise ValueError("mms must list init_mm/kernel and/or efi_mm/efi")
    rules = _rules_per_mm(item.get("va", DIRECT), mms)
    for mm, rs in rules.items():
        for r in rs:
            if r not in VA_RULES:
                raise ValueError(f"va: unknown rule {r!r} (use {', '.join(VA_RULES)})")
    for f in ("writable", "executable", "required"):
        if f in item and not isinstance(item[f], bool):
            raise ValueError(f"{f} must be true or false")
    return {"name": name, "start": start, "size": size, "rules": rules,
            "cache": cache_set(item.get("cache", "any")), "writable": item.get("writable"),
            "executable": item.get("executable"), "required": item.get("required", True)}


def to_ranges(specs: list[dict[str, Any]], facts: KernelFacts,
              efi_va_of: Callable[[int], Optional[int]]) -> list[Range]:
    """Turn validated specs into ``Range``s for one kernel (VA rules need its facts)."""
    out = []
    for s in specs:
        exps = []
        for mm, rules in s["rules"].items():
            for rule in rules:
                efi_va = efi_va_of(s["start"]) if rule == EFI_VA else None
                if rule == EFI_VA and efi_va is None:
                    continue  # reported by the range's own "no EFI VA" note below
                exps.append(Expectation(
                    mm, rule, va_for(rule, s["start"], facts, efi_va), s["cache"],
                    s["writable"], s["executable"], s["required"],
                    shared_from=INIT_MM if (mm == EFI_MM and rule == DIRECT) else None,
                    why="configured in the ranges file"))
        out.append(Range(s["name"], s["start"], s["size"], "config", "configured",
                         expectations=tuple(exps)))
    return out
