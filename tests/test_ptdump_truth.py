"""`mmrwatch ptdump` against the kernel's own /sys/kernel/debug/page_tables/* (issue 3).

The UV-enabled guest captures its own ptdump output with shell builtins (no fork, so the
capture does not add vmalloc'd stacks) and stays paused from capture to dump: the two
outputs must be identical, line for line, with no normalisation.
"""
import difflib

import pytest

from tests.conftest import mmrwatch

pytestmark = [pytest.mark.realkernel, pytest.mark.uvkernel]


@pytest.mark.parametrize("boot", ["l5", "l4"])
@pytest.mark.parametrize("mm", ["kernel", "efi"])
@pytest.mark.parametrize("types", ["dwarf", "btf"])
def test_ptdump_identical_to_kernel(bed, uvk, boot, mm, types):
    """With DWARF and with BTF + kallsyms alike (the address markers come from memory)."""
    b = bed.boot(f"{uvk}-{boot}")
    truth = b.truth[mm]
    assert truth.startswith("---[ User Space ]---"), truth[:200]
    src = ["--vmlinux", str(b.kernel.vmlinux)] if types == "dwarf" else ["--debug-info", "btf"]
    res = mmrwatch("ptdump", "--vmcore", str(b.elf), *src, "--mm", mm, check_rc=0)
    diff = "\n".join(difflib.unified_diff(truth.splitlines(), res.stdout.splitlines(),
                                         "kernel", "mmrwatch", lineterm="", n=1))
    assert res.stdout == truth, diff[:5000]
    assert res.stderr == ""
