"""Where a hubbed UV system's high MMR spans are: MMR_HI and GRU_HI from hub info, from the
kernel's boot lines, and what to say where the two disagree.

Separate from ``uv`` (discovery and ranges) because it is the one part that weighs two
sources of the same fact against each other: hub info (``global_mmr_base``/``shift``,
``gru_start/end_paddr``: what the kernel *addresses*) and the ``UV: Map`` boot lines
(``uvlog``: what ``map_high()`` *mapped* from the overlay registers).  Which wins, and
which impossible span is a problem instead, is decided here alone; ``uv.segments`` turns
the chosen spans into per-pnode segments and ``uv.discover`` keeps the notes.  It reads no
kernel state itself: it works on a discovered ``uv.UVSystem``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from . import uvbounds
from .kernel import KernelFacts

if TYPE_CHECKING:                 # uv imports this module: the type only, for the hints
    from .uv import UVSystem

# MMR overlay BASE_MASK / BASE_SHFT per hub (uv_mmrs.h)
MMR_BASE = {"UV1": (0x00003FFFFC000000, 26), "UV2": (0x00003FFFFC000000, 26),
            "UV3": (0x00003FFFFC000000, 26), "UV4": (0x00003FFFFC000000, 26),
            "UV4A": (0x000FFFFFFC000000, 26), "UV5": (0x000FFFFFFE000000, 25)}


@dataclass
class Notebook:
    """Corrupt state (by kind) and notes, in the order found.  Working out spans and ranges
    after discovery writes into a notebook of its own, seeded with discovery's problems, and
    ``ranges`` returns its notes: the discovery result stays what was discovered, and one
    kind of corrupt state is one note and one state range however often it is met (spans
    are computed more than once per check)."""

    problems: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def problem(self, what: str, why: str) -> None:
        if what not in self.problems:
            self.problems[what] = why
            self.notes.append(f"UV {what}: {why}: not checked")


def hub_spans(sysm: UVSystem, rec: Notebook, facts: Optional[KernelFacts] = None
               ) -> dict[str, tuple[int, int, int]]:
    """(start, bytes per pnode, pnodes) of MMR_HI and GRU_HI from hub info and GRU bounds;
    impossible ones (``uvbounds``, the VA check with ``facts``) are problems for ``rec``,
    not spans."""
    out: dict[str, tuple[int, int, int]] = {}
    if not sysm.hubs:
        return out
    n = max(sysm.pnodes) + 1
    mask, shift = MMR_BASE.get(sysm.hub or "UV2", MMR_BASE["UV2"])
    h0 = sysm.hubs[0]
    if h0.global_mmr_base & mask:
        shift = h0.global_mmr_shift or shift
        bad = uvbounds.shift_problem(shift)
        if bad:
            rec.problem("MMR_HI", f"hub info's {bad}")
        else:
            out["MMR"] = (h0.global_mmr_base & mask, 1 << shift, n)
    if sysm.gru:
        out["GRU"] = (sysm.gru[0], (sysm.gru[1] - sysm.gru[0]) // n, n)
    for key, span in list(out.items()):
        bad = uvbounds.span_problem(f"{key}_HI", *span, facts)
        if bad:
            rec.problem(f"{key}_HI", f"{'hub info' if key == 'MMR' else 'gru_start/end_paddr'}"
                                     f" give {bad}")
            del out[key]
    return out


def spans(sysm: UVSystem, book: Notebook, facts: Optional[KernelFacts] = None
           ) -> dict[str, tuple[int, int, int]]:
    """The spans to check.  MMR_HI: what the kernel *addresses*, ``global_mmr_base |
    pnode << global_mmr_shift`` from hub info (the BIOS GAM table on UV4/UV5), else what
    ``map_mmr_high()`` logged it mapped from the overlay register.  GRU_HI: the logged
    mapping wins over ``gru_start/end_paddr``.  A logged span no UV system can have is a
    problem, and the hub info's (if any) is checked instead."""
    out = hub_spans(sysm, book, facts)
    for key in ("MMR", "GRU"):
        m = sysm.logged.get(key)
        if m is not None and (key == "GRU" or key not in out):
            n = m.segments or (out[key][2] if key in out else 1)
            span = (m.start, m.size // n, n)
            bad = uvbounds.span_problem(f"{key}_HI", *span, facts)
            if bad:
                book.problem(f"{key}_HI boot line", f"the kernel's 'UV: Map' line gives {bad}")
            else:
                out[key] = span
    return out


def log_disagreements(sysm: UVSystem) -> list[str]:
    """Which source each high span came from, and where hub info and the kernel's boot
    line disagree (the kernel then maps one span and addresses another)."""
    notes = []
    hub = hub_spans(sysm, Notebook(sysm.problems, sysm.notes))    # still discovering
    m = sysm.logged.get("MMR")
    if "MMR" in hub:
        start, seg, n = hub["MMR"]
        if m is None:
            notes.append("MMR_HI from hub info (global_mmr_base | pnode << global_mmr_shift: "
                         "what the kernel addresses); the kernel's 'UV: Map MMR_HI' boot line "
                         "is not in the log (rotated, or logged at debug level before 5.10), so "
                         "what it mapped from the overlay register is not compared")
        elif (start, start + seg * n) != (m.start, m.end):
            notes.append(f"MMR_HI disagreement: hub info's global_mmr_base/shift give "
                         f"0x{start:x}-0x{start + seg * n:x} (what the kernel addresses, "
                         f"checked), but the kernel logged mapping 0x{m.start:x}-0x{m.end:x} "
                         "from the overlay register at boot")
    elif m is not None:
        notes.append("MMR_HI from the kernel's 'UV: Map MMR_HI' boot line (hub info has no "
                     "global_mmr_base)")
    g = sysm.logged.get("GRU")
    if g is not None and "GRU" in hub:
        start, seg, n = hub["GRU"]
        if (start, start + seg * n) != (g.start, g.end):
            notes.append(f"gru_start/end_paddr give GRU_HI 0x{start:x}-0x{start + seg * n:x}, "
                         f"but the kernel logged mapping 0x{g.start:x}-0x{g.end:x} at boot: "
                         "checking what the kernel mapped")
    return notes
