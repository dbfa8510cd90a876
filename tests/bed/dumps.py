"""Make QEMU's kdump-compressed dumps readable by drgn/libkdumpfile.

QEMU 7.2 writes ``kdump-*`` dumps in makedumpfile's *flattened* format (reassembled with
``makedumpfile -R``) and leaves the diskdump header's utsname empty, which libkdumpfile
rejects ("KDUMP_ATTR_ARCH_NAME: Key has no value").  We fill sysname/release/version/
machine from the dump's own VMCOREINFO.  ELF dumps need neither fix.
"""
from __future__ import annotations

import mmap
import subprocess
from pathlib import Path

_UTS_OFF, _UTS_LEN = 12, 65   # struct new_utsname right after signature + header_version


def fix_qemu_kdump(flat: Path, out: Path) -> None:
    out.unlink(missing_ok=True)
    with open(flat, "rb") as src:
        res = subprocess.run(["makedumpfile", "-R", str(out)], stdin=src,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if res.returncode != 0 or not out.exists():
        raise RuntimeError(f"makedumpfile -R failed: {res.stderr.decode(errors='replace')[-500:]}")
    with open(out, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        if m[:8] != b"KDUMP   ":
            raise RuntimeError(f"{out}: not a kdump-compressed file after reassembly")
        pos = m.find(b"OSRELEASE=")
        if pos < 0:
            raise RuntimeError(f"{out}: no VMCOREINFO OSRELEASE in the dump")
        release = m[pos + 10:m.find(b"\n", pos)]
        fields = {0: b"Linux", 2: release, 3: b"#1", 4: b"x86_64"}
        for idx, val in fields.items():
            off = _UTS_OFF + idx * _UTS_LEN
            if not m[off:off + _UTS_LEN].strip(b"\0"):
                m[off:off + _UTS_LEN] = val[:_UTS_LEN - 1].ljust(_UTS_LEN, b"\0")
