"""The kernel globals mmrwatch reads, with their C types: the one place they are declared.

Kernel BTF describes every type but, per-CPU variables aside, no variable: nothing in it
says that ``efi_mm`` is a ``struct mm_struct``.  Without DWARF that knowledge has to come
from somewhere, and this table is it.  Each entry names the kernel file that defines the
variable; where the type changed across kernels the spelling here is the one BTF-era kernels
(v5.2+) use.  Variables DWARF does not describe either (``phys_base`` is defined in
head_64.S) are deliberately absent: both modes then take VMCOREINFO's value.  The address comes from the symbol source (kallsyms or System.map), the type
from BTF, so ``prog["efi_mm"]`` answers exactly as it does with DWARF.

The object finder also answers per-CPU variables (BTF's ``.data..percpu`` DATASEC),
enumerators (``desc_committed``) and functions (BTF FUNC records), which drgn's helpers
(``per_cpu``, ``cpu_curr``, ``get_printk_records``) look up by name.
"""
from __future__ import annotations

from typing import Optional

import drgn

from . import btf
from .btftypes import BTFTypes

DECLARED: dict[str, str] = {
    # mm/init-mm.c, arch/x86/platform/efi/efi_64.c (v4.17+), efi_64.c v4.6-v4.16
    "init_mm": "struct mm_struct",
    "efi_mm": "struct mm_struct",
    "efi_pgd": "pgd_t *",
    # drivers/firmware/efi/efi.c (include/linux/efi.h); v4.6's global EFI memory map
    "efi": "struct efi",
    "memmap": "struct efi_memory_map",
    # arch/x86/kernel/head64.c, arch/x86/mm/physaddr.c,
    # arch/x86/mm/mem_encrypt_amd.c, arch/x86/mm/init.c, arch/x86/mm/dump_pagetables.c
    "page_offset_base": "unsigned long",
    "vmalloc_base": "unsigned long",
    "vmemmap_base": "unsigned long",
    "physical_mask": "phys_addr_t",
    "sme_me_mask": "u64",
    "__pte2cachemode_tbl": "uint8_t [8]",
    "address_markers": "struct addr_marker []",    # ends with { -1, NULL }
    # arch/x86/kernel/apic/x2apic_uv_x.c, arch/x86/platform/uv/bios_uv.c
    "uv_system_type": "enum uv_system_type",
    "uv_hubless_system": "int",
    "uv_min_hub_revision_id": "int",
    "uv_hub_info_node0": "struct uv_hub_info_s",
    "__uv_hub_info_list": "void **",
    "gru_start_paddr": "u64",
    "gru_end_paddr": "u64",
    "uv_systab": "struct uv_systab *",
    "uv_systab_phys": "unsigned long",
    # mm/page_alloc.c, kernel/smp.c, kernel/cpu.c, arch/x86/kernel/setup_percpu.c
    "nr_node_ids": "unsigned int",
    "nr_cpu_ids": "unsigned int",
    "__cpu_online_mask": "struct cpumask",
    "__cpu_possible_mask": "struct cpumask",
    "__cpu_present_mask": "struct cpumask",
    "__per_cpu_offset": "unsigned long []",        # [NR_CPUS]
    # per-CPU (kernel/sched/core.c, arch/x86/mm/init.c): BTF's .data..percpu DATASEC has
    # them when pahole emitted it (not in Debian 11's 5.10 BTF), so they are declared too
    "runqueues": "struct rq",
    "cpu_tlbstate": "struct tlb_state",
    # kernel/panic.c, arch/x86/kernel/reboot.c (crash path)
    "panic_cpu": "atomic_t",
    "crashing_cpu": "int",
    # kernel/printk/printk.c: v5.10+ lockless ring, and the structured buffer before it
    "prb": "struct printk_ringbuffer *",
    "log_buf": "char *",
    "log_buf_len": "u32",
    "log_first_idx": "u32",
    "log_next_idx": "u32",
    "log_first_seq": "u64",
}


FINDER = "mmrwatch-kglobals"


class KernelObjects:
    """drgn object finder: declared globals, per-CPU variables, enumerators, functions."""

    def __init__(self, types: BTFTypes) -> None:
        self.types = types
        self.btf = types.btf

    def register(self) -> None:
        self.types.prog.register_object_finder(FINDER, self.find, enable_index=-1)

    def _address(self, prog: drgn.Program, name: str) -> Optional[int]:
        try:
            return prog.symbol(name).address
        except LookupError:
            return None

    def find(self, prog: drgn.Program, name: str, flags: drgn.FindObjectFlags,
             filename: Optional[str]) -> Optional[drgn.Object]:
        """drgn's object-finder callback; None when this kernel has no such object."""
        if flags & drgn.FindObjectFlags.VARIABLE:
            obj = self._variable(prog, name)
            if obj is not None:
                return obj
        if flags & drgn.FindObjectFlags.CONSTANT:
            hit = self.btf.enumerator(name)
            if hit is not None:
                return drgn.Object(prog, self.types.type(hit[0]), hit[1])
        if flags & drgn.FindObjectFlags.FUNCTION:
            ids = self.btf.find(name, (btf.FUNC,))
            addr = self._address(prog, name) if ids else None
            if addr is not None:
                return drgn.Object(prog, self.types.type(ids[0]), address=addr)
        return None

    def _variable(self, prog: drgn.Program, name: str) -> Optional[drgn.Object]:
        spelled = DECLARED.get(name)
        percpu = None if spelled else self.btf.percpu_variables().get(name)
        if spelled is None and percpu is None:
            return None
        addr = self._address(prog, name)
        if addr is None:
            return None
        if percpu is not None:
            return drgn.Object(prog, self.types.type(percpu), address=addr)
        try:
            t = prog.type(spelled)
        except LookupError:          # e.g. struct uv_hub_info_s on a kernel without UV
            return None
        return drgn.Object(prog, t, address=addr)
