"""UV personalities for a running UV-enabled guest: write the state uv_system_init() leaves.

UV hardware cannot be emulated, so the test bed boots the CONFIG_X86_UV kernel and, with the
guest paused, writes into its RAM file exactly what ``uv_system_init()`` would have left:
``uv_system_type``, hub info structures (laid out with the vmlinux's own DWARF), the node
list, GRU bounds, and 2 MiB uncached PMDs in init_mm at ``page_offset_base + phys``.  New
structures and table pages come from RAM the kernel maps (so pointers into it translate)
but never uses: the tail of a ``log_buf_len=16M`` printk buffer (which survives into a real
kdump), else a ``crashkernel=`` reservation.  Nothing in the guest touches them, so it
keeps running.  Scenario expectations are written in the tests from the rules.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

import drgn

from mmrwatch.collectors import x86
from mmrwatch.collectors.kernel import read_facts

from .qemu import Guest

LEAF_UC = x86.P | x86.RW | x86.A | x86.D | x86.PSE | x86.NX | x86.PCD | x86.PWT
LEAF_WB = x86.P | x86.RW | x86.A | x86.D | x86.PSE | x86.NX
TABLE = x86.P | x86.RW | x86.US | x86.A | x86.D      # __init_extra_mapping(): _KERNPG_TABLE|_PAGE_USER
EFI_UCMINUS = x86.P | x86.RW | x86.A | x86.D | x86.PSE | x86.NX | x86.PCD
UV_X2APIC = 2
# hub_type as v5.10+ uv_system_init_hub() leaves it (a UV4A is UV4|UV4A), and the revision
HUB = {"UV2": (1, 3), "UV3": (2, 5), "UV4": (4, 7), "UV4A": (4 | 8, 8), "UV5": (16, 9)}


class GuestMemory:
    """drgn over the guest's RAM file, and writes to it (guest must be paused)."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.ram = guest.ram()
        # vmcoreinfo_data: a NUL-terminated "KEY=value\n" buffer starting with OSRELEASE=
        start = self.ram.find(b"OSRELEASE=" + guest.kernel.release.encode() + b"\n")
        if start < 0:
            raise RuntimeError("no VMCOREINFO found in guest RAM")
        vmcoreinfo = self.ram[start:self.ram.find(b"\0", start)]
        self.prog = drgn.Program(drgn.Platform(drgn.Architecture.X86_64))
        ram = self.ram
        self.prog.add_memory_segment(0, len(ram), lambda a, n, off, p: ram[off:off + n], True)
        self.prog.set_linux_kernel_custom(vmcoreinfo, False)
        self.prog.load_debug_info([str(guest.kernel.vmlinux)])
        self.facts = read_facts(self.prog)
        start, self.pool_end = self._pool()
        # The cursor lives with the guest: a later injection must not reuse (and so
        # overwrite) the structures an earlier one placed in the pool.
        if not hasattr(guest, "_uv_pool"):
            guest._uv_pool = start

    def _pool(self) -> tuple[int, int]:
        """RAM the kernel maps but never uses: the tail of a big printk buffer, else the
        crashkernel reservation.

        Only the first survives a real kdump: kexec loads the capture kernel into the
        crashkernel region and /proc/vmcore leaves it out, while a ``log_buf_len=16M``
        buffer is ordinary kernel memory that makedumpfile keeps (and printk fills it from
        the front; a test never logs 8 MiB).
        """
        size = int(self.prog["log_buf_len"])
        if size >= 16 << 20:
            base = self.facts.kernel_pa(self.prog["log_buf"].value_())
            return base + size // 2, base + size
        crash = self.prog["crashk_res"]
        if int(crash.start) >= int(crash.end):
            raise RuntimeError("boot the guest with log_buf_len=16M or crashkernel=64M for an "
                               "injection pool")
        return int(crash.start), int(crash.end) + 1

    def alloc(self, size: int = 4096) -> int:
        pa = (self.guest._uv_pool + 4095) & ~4095
        self.guest._uv_pool = pa + size
        if self.guest._uv_pool > self.pool_end:
            raise MemoryError("injection pool exhausted")
        self.ram[pa:pa + size] = bytes(size)
        return pa

    def write(self, pa: int, data: bytes) -> None:
        self.ram[pa:pa + len(data)] = data

    def pa_of(self, name: str) -> int:
        return self.facts.image_pa(self.prog[name].address_)

    def set_var(self, name: str, value) -> None:
        obj = self.prog[name]
        self.write(self.pa_of(name), drgn.Object(self.prog, obj.type_, value=value).to_bytes_())

    def entry(self, table: int, idx: int) -> int:
        return struct.unpack_from("<Q", self.ram, table + 8 * idx)[0]

    def set_entry(self, table: int, idx: int, val: int) -> None:
        struct.pack_into("<Q", self.ram, table + 8 * idx, val)

    def root(self, mm: str) -> int:
        return self.facts.kernel_pa(self.prog[mm].pgd.value_())

    def pmd_table(self, root: int, va: int) -> int:
        """The PMD table for ``va`` under ``root``, creating levels like __init_extra_mapping."""
        t = root
        for lvl in range(x86.top_level(self.facts.levels), x86.PMD):
            idx = (va >> x86.level_shift(lvl)) & 511
            e = self.entry(t, idx)
            if not e & x86.P:
                child = self.alloc()
                self.set_entry(t, idx, child | TABLE)
                t = child
            elif lvl == x86.PUD and e & x86.PSE:
                raise RuntimeError(f"0x{va:x} is inside a 1 GiB page")
            else:
                t = e & x86.PTE_PFN_MASK
        return t

    def map_2m(self, root: int, va: int, pa: int, size: int, flags: int) -> None:
        for off in range(0, size, 1 << 21):
            t = self.pmd_table(root, va + off)
            self.set_entry(t, ((va + off) >> 21) & 511, (pa + off) | flags)

    def unmap_2m(self, root: int, va: int, size: int) -> None:
        for off in range(0, size, 1 << 21):
            t = self.pmd_table(root, va + off)
            self.set_entry(t, ((va + off) >> 21) & 511, 0)

    def sync_kernel_half(self) -> None:
        """What efi_sync_low_kernel_mappings() does at the next EFI call (top level)."""
        init, efi = self.root("init_mm"), self.root("efi_mm")
        for idx in range(x86.top_index(self.facts.page_offset_base, self.facts.levels), 511):
            self.set_entry(efi, idx, self.entry(init, idx))

    def reopen_stale_window(self, va: int) -> None:
        """Give init_mm's top-level slot for ``va`` a fresh copy of its next-level table and
        drop ``va``'s entry from the original, which efi_mm still holds: init_mm keeps the
        mapping, efi_mm has not been re-synced since -- the stale window (4-level: the
        direct map's slots are copied one by one at each EFI call)."""
        init, efi = self.root("init_mm"), self.root("efi_mm")
        top = x86.top_level(self.facts.levels)
        idx = x86.top_index(va, self.facts.levels)
        old = self.entry(init, idx)
        if not old & x86.P or old != self.entry(efi, idx):
            raise RuntimeError("the slot is not shared by init_mm and efi_mm")
        table = old & x86.PTE_PFN_MASK
        copy = self.alloc()
        self.write(copy, bytes(self.ram[table:table + 4096]))
        self.set_entry(init, idx, copy | (old & ~x86.PTE_PFN_MASK))
        self.set_entry(table, (va >> x86.level_shift(top + 1)) & 511, 0)

    def add_runtime_mmio(self, phys: int, size: int) -> None:
        """Append an EFI_MEMORY_MAPPED_IO runtime descriptor to the kernel's efi.memmap."""
        mm = self.prog["efi"].memmap
        n, dsize = int(mm.nr_map), int(mm.desc_size)
        old = bytes(self.prog.read(mm.map.value_(), n * dsize))
        new = self.alloc(((n + 1) * dsize + 4095) & ~4095)
        desc = struct.pack("<IIQQQQ", 11, 0, phys, 0, size >> 12, (1 << 63) | 1).ljust(dsize, b"\0")
        self.write(new, old + desc)
        base = self.facts.page_offset_base
        off = self.prog["efi"].type_.member("memmap").offset
        t = self.prog.type("struct efi_memory_map")
        vals = {"phys_map": new, "map": base + new, "map_end": base + new + (n + 1) * dsize,
                "nr_map": n + 1, "desc_version": int(mm.desc_version), "desc_size": dsize,
                "flags": int(mm.flags)}
        self.write(self.pa_of("efi") + off, drgn.Object(self.prog, t, value=vals).to_bytes_())

    def set_bios_entry(self, function: int) -> None:
        """A UVsystab whose BIOS entry is ``function``, as uv_bios_init() finds it (the
        kernel keeps an ioremapped ``uv_systab`` pointer; here it points into the pool)."""
        t = self.prog.type("struct uv_systab")
        pa = self.alloc()
        vals = {"signature": list(b"UVST"), "revision": 0x400, "function": function,
                "size": t.size}
        self.write(pa, drgn.Object(self.prog, t, value=vals).to_bytes_())
        self.set_var("uv_systab", self.facts.page_offset_base + pa)


    def printk(self, text: str, level: int = 6) -> None:
        """Append a kernel (facility 0) record to the printk ring, as prb_reserve() +
        prb_final_commit() would (v5.10+ lockless ring), so the guest's own later messages
        follow it.  Boot messages of the personality (``UV: Map MMR_HI ...``) are written
        this way.  Only the simple case: no descriptor reuse, no data wrap (a fresh boot).
        """
        prog = self.prog
        prb = prog["prb"]
        dr, tr = prb.desc_ring, prb.text_data_ring
        count, size = 1 << int(dr.count_bits), 1 << int(tr.size_bits)
        bits = 64
        flags_shift = bits - 2
        id_mask = (1 << flags_shift) - 1
        u64 = (1 << 64) - 1               # atomic_long_t is signed; lpos/ids start negative
        head = int(dr.head_id.counter) & u64
        rid = (head + 1) & id_mask
        idx = rid & (count - 1)
        desc, info = dr.descs[idx], dr.infos[idx]
        if int(desc.state_var.counter) & u64:
            raise RuntimeError("printk ring descriptor in use (ring wrapped): not supported")
        data = text.encode()
        blk = (8 + len(data) + 7) & ~7
        begin = int(tr.head_lpos.counter) & u64
        nxt = (begin + blk) & u64
        if begin >> int(tr.size_bits) != nxt >> int(tr.size_bits) or \
                (nxt - int(tr.tail_lpos.counter)) & u64 > size:
            raise RuntimeError("printk data ring would wrap: not supported")
        data_pa = self.facts.kernel_pa(tr.data.value_())
        self.write(data_pa + (begin & (size - 1)), struct.pack("<Q", rid) + data)
        seq = int(info.seq)
        seq = idx if seq == 0 and idx != 0 else seq + count
        prev = dr.infos[head & (count - 1)]
        vals = {"seq": seq, "ts_nsec": int(prev.ts_nsec) + 1, "text_len": len(data),
                "facility": 0, "flags": 0, "level": level, "caller_id": 0}
        it = prog.type("struct printk_info")
        self.write(self.facts.kernel_pa(info.address_),
                   drgn.Object(prog, it, value=vals).to_bytes_())
        # the previous record is final once a new one exists (desc_make_final)
        prev_desc = dr.descs[head & (count - 1)]
        sv = int(prev_desc.state_var.counter) & u64
        if sv >> flags_shift == 1 and sv & id_mask == head:
            struct.pack_into("<Q", self.ram, self.facts.kernel_pa(prev_desc.address_),
                             (2 << flags_shift) | head)
        lpos = self.facts.kernel_pa(desc.text_blk_lpos.address_)
        struct.pack_into("<QQ", self.ram, lpos, begin, nxt)
        struct.pack_into("<Q", self.ram, self.facts.kernel_pa(desc.address_),
                         (2 << flags_shift) | rid)                 # desc_finalized
        struct.pack_into("<Q", self.ram, self.facts.kernel_pa(tr.head_lpos.address_), nxt)
        struct.pack_into("<Q", self.ram, self.facts.kernel_pa(dr.head_id.address_), rid)
        # the newest finalized record: by id (last_finalized_id) up to v6.8; by sequence
        # number from v6.9 (John Ogness's prb_next_seq() series: last_finalized_seq, kept
        # by desc_update_last_finalized())
        names = {m.name for m in dr.type_.members}
        last, val = (("last_finalized_seq", seq) if "last_finalized_seq" in names
                     else ("last_finalized_id", rid))
        struct.pack_into("<Q", self.ram, self.facts.kernel_pa(getattr(dr, last).address_), val)

@dataclass(frozen=True)
class Personality:
    hub: str
    blades: int = 1
    mmr_hi: int = 0x3FFF0000000
    gru: Optional[int] = 0x7FF00000000
    pnodes: Optional[tuple[int, ...]] = None    # blade b's pnode (default b): gaps allowed

    def pnode(self, blade: int) -> int:
        return self.pnodes[blade] if self.pnodes else blade

    @property
    def segments(self) -> int:
        """map_high() maps max_pnode + 1 segments, hub or not."""
        return self.pnode(self.blades - 1) + 1


def make_uv(gm: GuestMemory, p: Personality, map_init: bool = True) -> dict[str, tuple[int, int]]:
    """Install hub state for ``p`` and (optionally) its init_mm mappings; returns the ranges.

    As the kernel's ``uv_system_init_hub()`` leaves it, per generation (keyed, as mmrwatch
    is, by what the kernel has: ``uv_hub_info_s.node_to_socket``):

    * up to v6.4: one ``struct uv_hub_info_s`` per possible NUMA node (node 0's is the
      static ``uv_hub_info_node0``, the others allocated), each a copy of the system-wide
      hub info with its node's ``pnode``, ``numa_blade_id`` and ``memory_nid``;
    * v6.5+ ("x86/platform/uv: Update UV[23] platform code for SNC", the sub-NUMA
      clustering series): one per *blade* (blade 0's is ``uv_hub_info_node0``), and
      ``__uv_hub_info_list[node]`` points at the struct of the node's blade, shared by all
      its nodes; ``memory_nid`` is the blade's first node (set from its first CPU).

    Nodes are spread over the blades in order, so a multi-blade personality needs a
    multi-node guest (``numa=fake=N``).  A previous personality's init_mm mappings are
    removed first.
    """
    prog = gm.prog
    nodes = int(prog["nr_node_ids"])
    if p.blades > nodes:
        raise ValueError(f"{p.blades} blades need >= {p.blades} NUMA nodes (boot with "
                         f"numa=fake={p.blades}); this guest has {nodes}")
    clear_uv(gm)
    hub_type, rev = HUB[p.hub]
    shift = 25 if p.hub == "UV5" else 26
    gshift = 25 if p.hub == "UV5" else 26 if p.hub.startswith("UV4") else 28
    t = prog.type("struct uv_hub_info_s")
    names = {m.name for m in t.members}
    per_blade = "node_to_socket" in names
    lst = gm.alloc(8 * nodes)
    blade_of = [node * p.blades // nodes for node in range(nodes)]
    placed: dict[int, int] = {}                        # owner (blade or node) -> struct VA
    for node in range(nodes):
        blade = blade_of[node]
        owner = blade if per_blade else node
        if owner not in placed:
            h = gm.pa_of("uv_hub_info_node0") if owner == 0 else gm.alloc()
            vals = {"hub_revision": rev, "global_mmr_base": p.mmr_hi,
                    "global_mmr_shift": shift, "pnode": p.pnode(blade),
                    "numa_blade_id": blade, "m_val": 40, "n_val": 6, "memory_nid": node}
            if "hub_type" in names:
                vals["hub_type"] = hub_type
            gm.write(h, drgn.Object(prog, t, value=vals).to_bytes_())
            placed[owner] = (prog["uv_hub_info_node0"].address_ if owner == 0
                             else gm.facts.page_offset_base + h)
        struct.pack_into("<Q", gm.ram, lst + 8 * node, placed[owner])
    gm.set_var("__uv_hub_info_list", gm.facts.page_offset_base + lst)
    gm.set_var("uv_min_hub_revision_id", rev)
    ranges = {"LOCAL_MMR": (0xFA000000, 32 << 20),
              "MMR_HI": (p.mmr_hi, p.segments << shift)}
    if p.hub in ("UV2", "UV3"):
        ranges["GLOBAL_MMR32"] = (0xFC000000, 32 << 20)
    if p.gru:
        gm.set_var("gru_start_paddr", p.gru)
        gm.set_var("gru_end_paddr", p.gru + (p.segments << gshift))
        ranges["GRU_HI"] = (p.gru, p.segments << gshift)
    gm.set_var("uv_system_type", UV_X2APIC)
    if map_init:
        init = gm.root("init_mm")
        for name, (pa, size) in ranges.items():
            gm.map_2m(init, gm.facts.page_offset_base + pa, pa, size,
                      LEAF_WB if name == "GRU_HI" else LEAF_UC)
        gm.sync_kernel_half()
    gm.guest._uv_ranges = dict(ranges)
    return ranges


def clear_uv(gm: GuestMemory) -> None:
    """Undo a previous personality's init_mm mappings (its structures stay in the pool)."""
    old = getattr(gm.guest, "_uv_ranges", {})
    init = gm.root("init_mm")
    for pa, size in old.values():
        gm.unmap_2m(init, gm.facts.page_offset_base + pa, size)
    if old:
        gm.sync_kernel_half()
    gm.guest._uv_ranges = {}


def inject(guest: Guest, fn, resume: bool = True) -> None:
    """Run ``fn(GuestMemory)`` with the guest paused (no torn state is ever visible).

    ``resume=False`` leaves it paused, so a dump taken next sees exactly this state: no
    guest instruction (an EFI call re-syncing efi_mm, say) runs in between.
    """
    def write() -> None:
        gm = GuestMemory(guest)
        fn(gm)
        gm.ram.flush()
    if resume:
        with guest.paused():
            write()
    else:
        guest.pause()
        write()


MMR_SEG = {"UV5": 32 << 20}            # MMR_HI bytes per blade (1 << overlay BASE_SHFT)


def many_faults(gm: GuestMemory) -> dict[str, object]:
    """An 8-blade UV3 with one fault per range, so one state (and one kdump) shows them all.

    * LOCAL_MMR: the 2016 regression (runtime MMIO, mapped 1:1 in efi_mm, not in init_mm);
    * GLOBAL_MMR32: the reverse (runtime MMIO, in init_mm, absent from efi_mm's 1:1 map);
    * MMR_HI blade 5: the whole segment missing; blade 2: a 2 MiB hole 4 MiB in;
    * GRU_HI blade 6: mapped uncached (GRU must be write-back).
    Returns what was done, for the test's own bookkeeping.
    """
    p = Personality("UV3", blades=8)
    ranges = make_uv(gm, p)
    pob, init, efi = gm.facts.page_offset_base, gm.root("init_mm"), gm.root("efi_mm")
    seg = MMR_SEG.get(p.hub, 64 << 20)
    local, g32 = ranges["LOCAL_MMR"], ranges["GLOBAL_MMR32"]
    gm.unmap_2m(init, pob + local[0], local[1])
    gm.map_2m(efi, local[0], *local, EFI_UCMINUS)
    gm.add_runtime_mmio(*local)
    gm.add_runtime_mmio(*g32)
    gm.unmap_2m(init, pob + p.mmr_hi + 5 * seg, seg)
    gm.unmap_2m(init, pob + p.mmr_hi + 2 * seg + (4 << 20), 2 << 20)
    gseg = ranges["GRU_HI"][1] // p.blades
    gm.map_2m(init, pob + p.gru + 6 * gseg, p.gru + 6 * gseg, gseg, LEAF_UC)
    return {"personality": p, "ranges": ranges, "gru_seg": gseg, "mmr_seg": seg}
