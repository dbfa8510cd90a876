"""The drgn plugin, as an analyst uses it: drgn -c vmcore [-s vmlinux], then %mmrwatch.

Without ``-s`` (``--no-default-symbols``: drgn loads no DWARF) the plugin loads BTF and
kallsyms into drgn's program itself and must answer exactly as with DWARF."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import mmrwatch

pytestmark = [pytest.mark.realkernel]
DRGN = str(Path(sys.executable).parent / "drgn")


def _drgn(dump, vmlinux, *commands):
    code = "from drgn.commands import run_command\n" + "".join(
        f"run_command(prog, {c!r})\nprint('@@END@@')\n" for c in commands)
    symbols = ["-s", str(vmlinux)] if vmlinux else ["--no-default-symbols"]
    res = subprocess.run([DRGN, "-q", "-c", str(dump), *symbols, "-e", code],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    return res.stdout.split("@@END@@\n")[:-1]


@pytest.mark.parametrize("dwarf", [True, False], ids=["dwarf", "no-dwarf"])
def test_commands_inside_drgn_match_the_cli(bed, dwarf):
    b = bed.boot("debian-l5")
    rep, where, bad, pt = _drgn(b.elf, b.kernel.vmlinux if dwarf else None,
                                "mmrwatch report --format json",
                                "mmrwatch where --mm both 0xffc00000",
                                "mmrwatch where notanaddress",
                                "mmrwatch ptdump --mm efi")
    inside = json.loads(rep)
    cli = json.loads(mmrwatch("report", "--vmcore", str(b.elf), "--vmlinux",
                              str(b.kernel.vmlinux), "--format", "json").stdout)
    for key in ("verdict", "ranges", "address_spaces", "uv"):
        assert inside[key] == cli[key], key
    assert inside["kernel"]["page_offset_base"] == cli["kernel"]["page_offset_base"]
    assert inside["target"]["vmlinux"] is None and inside["target"]["build_id"]
    assert inside["target"]["debug_info"]["types"] == ("dwarf" if dwarf else "btf")
    # the EFI MMIO region (flash) is mapped 1:1 and at its EFI VA in efi_mm, not in init_mm
    assert where.splitlines()[0] == "PA 0xffc00000"
    assert "init_mm  not mapped" in where and where.count("efi_mm   VA") == 2
    assert bad.strip() == "mmrwatch where: not a physical address: 'notanaddress'"
    cli_pt = mmrwatch("ptdump", "--vmcore", str(b.elf), "--vmlinux", str(b.kernel.vmlinux),
                      "--mm", "efi").stdout
    assert pt == cli_pt
