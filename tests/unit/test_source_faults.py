"""A source that cannot read its kernel state reports that; the rest is still checked
(issue 15 item 5), and garbage in VMCOREINFO or uname does not stop a check (items 1, 10)."""
import drgn
import pytest

from mmrwatch.collectors import efi, engine, kernel, uv, x86

from tests.synth import KERNEL, SynthKernel, check

MMIO, RUNTIME = 11, 1 << 63
FLASH, FLASH_VA = 0xFFC00000, 0xFFFFFFFEFFC00000


def _kernel(**kw):
    k = SynthKernel(**kw)
    k.direct_map_ram()
    k.new_efi_root()
    k.map(k.efi_root, FLASH, FLASH, 4 << 20, 1 << 21, KERNEL | x86.PCD)
    k.map(k.efi_root, FLASH_VA, FLASH, 4 << 20, 1 << 21, KERNEL | x86.PCD)
    k.add_efi_desc(MMIO, FLASH, FLASH_VA, 1024, RUNTIME | 1)
    k.set_uv(pnodes=(0,), mmr_base=0x3FFF0000000 | 1 << 63)
    return k


UV_EFI = [engine.uv_source, engine.efi_source]


def test_unreadable_uv_state_is_a_note_and_a_finding_and_efi_is_still_checked(monkeypatch):
    def fault(prog):
        raise drgn.FaultError("page excluded from dump", 0xFFFF888000123000)
    monkeypatch.setattr(uv, "discover", fault)
    res = check(_kernel(), UV_EFI)
    (state,) = [f for f in res.findings if f.range.source == "uv"]
    assert state.status == "unreadable" and state.severity == "warning"
    assert "page excluded from dump" in state.message
    assert any(n.startswith("uv: cannot read its state") for n in res.notes)
    assert any(f.range.source == "efi-memmap" for f in res.findings)     # still checked
    assert res.verdict == "warning"          # the healthy EFI region adds nothing worse


def test_unreadable_efi_memory_map_is_a_note_and_uv_is_still_checked(monkeypatch):
    def fault(prog):
        raise drgn.FaultError("address is not mapped", 0x1234000)
    monkeypatch.setattr(efi, "read_memmap", fault)
    res = check(_kernel(), UV_EFI)
    assert any("EFI memory map is not readable" in n for n in res.notes)
    # one "unreadable" warning for the map, no region checked from it
    (state,) = [f for f in res.findings if f.range.source == "efi-memmap"]
    assert state.status == "unreadable" and state.severity == "warning"
    assert "address is not mapped" in state.message and state.range.size == 0
    assert [f for f in res.findings if f.range.source == "uv"]


class _GarbageInfo(SynthKernel):
    def vmcoreinfo(self) -> bytes:
        v = super().vmcoreinfo()
        return v.replace(b"OSRELEASE=6.1.0-synthetic", b"OSRELEASE=6.1\xff\x1b[31m") + \
            b"NUMBER(sme_mask)=zz\n"


def test_garbage_vmcoreinfo_numbers_and_uname_do_not_stop_the_check():
    k = _GarbageInfo()
    k.direct_map_ram()
    facts = kernel.read_facts(k.program())
    assert facts.sme_me_mask == 0 and "\x1b" not in facts.release and facts.release.isprintable()


@pytest.mark.parametrize("pages,virt", [(1 << 60, FLASH_VA), (1024, 0x0000_8000_0000_0000)])
def test_garbage_descriptor_is_a_note_and_not_used_by_other_sources(pages, virt):
    k = _kernel()
    k.add_efi_desc(MMIO, 0x10000000, virt, pages, RUNTIME | 1)
    res = check(k, UV_EFI)
    assert sum("is garbage" in n for n in res.notes) == 1
