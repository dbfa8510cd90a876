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
    """Each command's output; an error (drgn's CommandError) prints as ``error: ...``, and a
    command's return value as ``value: ...`` (report returns its exit status)."""
    code = ("from drgn.commands import CommandError, run_command\n" + "".join(
        f"try:\n    v = run_command(prog, {c!r})\n    print('value:', v)\n"
        f"except CommandError as e:\n    print('error:', e)\nprint('@@END@@')\n"
        for c in commands))
    symbols = ["-s", str(vmlinux)] if vmlinux else ["--no-default-symbols"]
    res = subprocess.run([DRGN, "-q", "-c", str(dump), *symbols, "-e", code],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    out, values = [], []
    for chunk in res.stdout.split("@@END@@\n")[:-1]:
        text, sep, value = chunk.rpartition("value: ")
        out.append(text if sep else chunk)
        values.append(value.strip() if sep else None)
    return out, values


@pytest.mark.parametrize("dwarf", [True, False], ids=["dwarf", "no-dwarf"])
def test_commands_inside_drgn_match_the_cli(bed, dwarf):
    b = bed.boot("debian-l5")
    (rep, where, bad, pt), values = _drgn(b.elf, b.kernel.vmlinux if dwarf else None,
                                          "mmrwatch report --format json",
                                          "mmrwatch where --mm both 0xffc00000",
                                          "mmrwatch where notanaddress",
                                          "mmrwatch ptdump --mm efi")
    assert values[0] == "0" and values[2] is None   # report's exit status; an error raised
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
    assert bad.strip() == "error: mmrwatch where: not a physical address: 'notanaddress'"
    cli_pt = mmrwatch("ptdump", "--vmcore", str(b.elf), "--vmlinux", str(b.kernel.vmlinux),
                      "--mm", "efi").stdout
    assert pt == cli_pt
