"""The README's first command: mmrwatch's main job on a real kernel, from nothing.

Boots the UV-enabled test kernel under QEMU + OVMF, runs the live check inside the guest
on its own /proc/kcore, then shows the same check on a crash dump from the host, with a
range configured the way a UV MMR is used (by kernel and firmware) to show the finding.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .boots import PLANS
from .cache import log
from .kernels import uv_kernel
from .qemu import Guest

HERE = Path(__file__).resolve().parent


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def main() -> int:
    t0 = time.monotonic()
    k = uv_kernel()
    work = Path(tempfile.mkdtemp(prefix="mmrwatch-demo-"))
    banner(f"booting the UV-enabled kernel {k.release} under QEMU + OVMF (TCG)")
    with Guest(k, PLANS["uv-l5"].spec, work / "guest") as g:
        banner("inside the guest: mmrwatch report --live (reads /proc/kcore)")
        rc, out, err = g.run(f"{sys.executable} -m mmrwatch report --live "
                             f"--vmlinux {k.vmlinux}", timeout=600, check=False)
        print(out, end="")
        print(err, end="", file=sys.stderr)
        banner("taking a crash dump of the running guest (QMP dump-guest-memory)")
        g.pause()
        dump = g.dump(work / "vmcore.elf")
        g.resume()
    ranges = HERE / "demo-ranges.toml"
    banner(f"on the host: mmrwatch report --vmcore {dump.name} --ranges {ranges.name}")
    res = subprocess.run([sys.executable, "-m", "mmrwatch", "report", "--vmcore", str(dump),
                          "--vmlinux", str(k.vmlinux), "--ranges", str(ranges)],
                         capture_output=True, text=True)
    print(res.stdout, end="")
    print(f"(exit code {res.returncode}: 2 = critical finding)")
    banner("the kernel's view vs the firmware's: mmrwatch ptdump --mm efi (first lines)")
    pt = subprocess.run([sys.executable, "-m", "mmrwatch", "ptdump", "--vmcore", str(dump),
                         "--vmlinux", str(k.vmlinux), "--mm", "efi"],
                        capture_output=True, text=True)
    print("\n".join(pt.stdout.splitlines()[:12]) + "\n...")
    dump.unlink()
    log(f"demo finished in {time.monotonic() - t0:.0f} s (work files in {work})")
    return 0 if rc == 0 and res.returncode == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
