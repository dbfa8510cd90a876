"""The EFI memory map reader (``efi.read_memmap``) and its descriptor sanity rules on
synthetic kernels.  Expected values are what the firmware wrote (``efi_memory_desc_t``:
type, pad, phys_addr, virt_addr, num_pages, attribute) and the UEFI / x86-64 limits, not
mmrwatch's output."""
import pytest

from mmrwatch.collectors import efi
from tests.synth import SynthKernel

RUNTIME, WB, UC_ = 1 << 63, 1 << 3, 1 << 0
MMIO, RT_CODE, CONVENTIONAL = 11, 5, 7
DESCS = [(RT_CODE, 0x7E000000, 0xFFFFFFFEFE000000, 16, RUNTIME | WB),
         (CONVENTIONAL, 0x100000, 0, 0x300, WB),
         (MMIO, 0xFFC00000, 0xFFFFFFFEFFC00000, 1024, RUNTIME | UC_)]


def _kernel(desc_size: int = 48, direct_map: bool = True) -> SynthKernel:
    k = SynthKernel(ram_mib=8)
    if direct_map:
        k.direct_map_ram()
    k.desc_size = desc_size
    for d in DESCS:
        k.add_efi_desc(*d)
    return k


@pytest.mark.parametrize("desc_size", [48, 56, 80])
def test_every_descriptor_is_read_at_the_firmwares_stride(desc_size):
    """UEFI's GetMemoryMap() returns DescriptorSize, which firmware pads past the 40 bytes
    of efi_memory_desc_t (real firmware says 48); the padding is not a descriptor."""
    got = efi.read_memmap(_kernel(desc_size).program())
    assert got == [efi.Descriptor(*d) for d in DESCS]
    assert [d.runtime for d in got] == [True, False, True]
    assert got[0].size == 16 << 12 and got[0].type_name == "RuntimeServicesCode"


def test_a_map_whose_kernel_mapping_is_gone_is_read_through_its_physical_address():
    """v4.6-v4.8 keep the early-boot map, whose mapping is gone after boot: phys_map."""
    assert efi.read_memmap(_kernel(direct_map=False).program()) == \
        [efi.Descriptor(*d) for d in DESCS]


def test_no_map_is_no_descriptors():
    assert efi.read_memmap(SynthKernel(ram_mib=4).program()) == []


@pytest.mark.parametrize("desc_size,count,says", [
    (32, 3, "desc_size 0x20 is no descriptor size"),        # smaller than the structure
    (8192, 3, "desc_size 0x2000 is no descriptor size"),    # more than a page
    (48, 70000, "nr_map 0x11170 is no descriptor count"),
])
def test_a_header_no_firmware_writes_is_a_value_error_naming_it(desc_size, count, says):
    k = _kernel(desc_size)
    k.descs += [DESCS[1]] * (count - len(DESCS))
    with pytest.raises(ValueError, match=says):
        efi.read_memmap(k.program())


@pytest.mark.parametrize("desc,says", [
    ((MMIO, 0xFFC00000, 0, 0, RUNTIME), "num_pages is 0"),
    ((MMIO, (1 << 52) - 4096, 0, 2, RUNTIME), "passes 52-bit physical addresses"),
    ((MMIO, 0xFFC00000, 0x0000900000000000, 1, RUNTIME), "virt_addr 0x900000000000"),
])
def test_garbage_descriptors_say_why(desc, says):
    assert says in efi.Descriptor(*desc).problem(4)
    assert efi.Descriptor(*DESCS[0]).problem(4) == ""


def test_a_va_canonical_only_with_five_levels_is_garbage_with_four():
    va = 0xFF00000000000000                   # canonical with 57 bits, not with 48
    d = efi.Descriptor(MMIO, 0xFFC00000, va, 1, RUNTIME)
    assert d.problem(5) == "" and "virt_addr" in d.problem(4)
