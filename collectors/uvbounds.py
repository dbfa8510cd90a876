"""What a UV system can hold, from the kernel's own limits: hub info, GRU bounds and boot
lines outside them are corrupt kernel state, reported once and not checked.

A corrupt dump's hub info can say anything: ``1 << global_mmr_shift`` with a shift of 2^40
exhausts memory, a GRU end at 2^60 makes spans no x86-64 address can reach, a pnode of
40000 makes tens of thousands of segments, a garbage ``nr_node_ids`` reads the hub list to
the end of RAM.  The limits (v6.1 / v6.12 sources):

* ``nr_node_ids`` <= ``MAX_NUMNODES`` = 1 << ``NODES_SHIFT``, at most 10 on x86
  (arch/x86/Kconfig ``NODES_SHIFT`` range 1..10);
* a pnode is ``(node_id >> nasid_shift) & pnode_mask`` with ``pnode_mask = (1 << n_skt) - 1``
  (x2apic_uv_x.c ``early_get_pnodeid()``); ``n_skt`` is a 3-bit field on UV5
  (``UVH_RH10_GAM_ADDR_MAP_CONFIG``): pnodes < 128; on UV2-UV4A a pnode is a NASID / 2 and
  NASIDs are < ``UV_MAX_NASID_VALUE`` = 2 x ``UV_MAX_NUMALINK_BLADES`` (uv_hub.h): < 16384;
* pnode 0xffff is "none": ``uv_system_init_hub()`` initialises it so and skips such blades
  when it computes ``max_pnode``, and so does discovery;
* every span must hold whole pages below 2^52 (``ranges.PHYS_LIMIT``) and have a canonical
  direct-map address, as ``init_extra_mapping_*()`` gives it.
"""
from __future__ import annotations

from typing import Optional

from .kernel import KernelFacts
from .ranges import DIRECT, PHYS_BITS, PHYS_LIMIT, human_size, va_for, va_span_problem

MAX_NUMNODES = 1 << 10
PNODE_NONE = 0xFFFF
MAX_PNODES = {"UV5": 1 << 7}
MAX_PNODES_DEFAULT = 16384           # UV_MAX_NUMALINK_BLADES
PAGE = 4096


def max_pnodes(hub: Optional[str]) -> int:
    """How many pnodes (0 .. n - 1) a hub generation can number."""
    return MAX_PNODES.get(hub or "", MAX_PNODES_DEFAULT)


def nodes_problem(nr: int) -> str:
    """Why ``nr_node_ids`` is no node count ("" when it can be one)."""
    if 0 < nr <= MAX_NUMNODES:
        return ""
    return f"nr_node_ids {nr:#x} is no node count (1..{MAX_NUMNODES}, MAX_NUMNODES on x86)"


def pnode_problem(pnode: int, node: int, hub: Optional[str]) -> str:
    """Why a hub's pnode is impossible for its generation ("" when it is possible)."""
    limit = max_pnodes(hub)
    if pnode < limit:
        return ""
    return (f"hub info of node {node}: pnode {pnode:#x} is beyond what {hub or 'UV'} hardware "
            f"numbers (pnodes < {limit}): that hub is not counted")


def shift_problem(shift: int) -> str:
    """Why a ``global_mmr_shift`` is impossible: one pnode's MMR segment must be whole pages
    below 2^52."""
    if 12 <= shift < PHYS_BITS:
        return ""
    return f"global_mmr_shift {shift} (a pnode's MMR_HI segment of 2^{shift} bytes)"


def span_problem(name: str, start: int, seg: int, n: int,
                 facts: Optional[KernelFacts] = None) -> str:
    """Why ``n`` segments of ``seg`` bytes from ``start`` cannot be what the kernel mapped
    ("" when they can): no pages, past 52-bit physical addresses, or (with ``facts``) a
    direct-map VA range that is not canonical with this kernel's paging."""
    what = f"{name} {start:#x} + {n} x {seg:#x} bytes"
    if n <= 0 or n > MAX_PNODES_DEFAULT:
        return f"{what}: {n} segments (a segment per pnode, pnodes < {MAX_PNODES_DEFAULT})"
    if seg < PAGE or seg % PAGE or start % PAGE:
        return f"{what}: segments are not whole pages"
    end = start + seg * n
    if end > PHYS_LIMIT:
        return f"{what}: ends at {end:#x}, past 52-bit physical addresses"
    bad = facts and va_span_problem(va_for(DIRECT, start, facts), seg * n, facts.levels)
    if bad:
        return f"{what}: its direct-map VA range ({human_size(seg * n)}) {bad}"
    return ""
