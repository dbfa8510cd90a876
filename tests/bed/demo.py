"""The README's first command: mmrwatch's main job on a real kernel, from nothing.

Boots the UV-enabled test kernel under QEMU + OVMF, runs the live check inside the guest on
its own /proc/kcore, then turns the guest into a simulated UV4 machine (hub state written
into the running kernel), checks a crash dump of it, injects the 2016 failure and shows the
finding.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cache import log
from .kernels import uv_kernel
from .qemu import BootSpec, Guest
from .uvinject import EFI_UCMINUS, GuestMemory, Personality, inject, make_uv



def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _report(dump: Path, *extra: str) -> int:
    """``mmrwatch report`` as a user runs it: no debug package (BTF + the kernel's kallsyms)."""
    res = subprocess.run([sys.executable, "-m", "mmrwatch", "report", "--vmcore", str(dump),
                          *extra], capture_output=True, text=True)
    print(res.stdout, end="")
    print(res.stderr, end="", file=sys.stderr)
    print(f"(exit code {res.returncode})")
    return res.returncode


def main() -> int:
    t0 = time.monotonic()
    k = uv_kernel()
    work = Path(tempfile.mkdtemp(prefix="mmrwatch-demo-"))
    banner(f"booting the UV-enabled kernel {k.release} under QEMU + OVMF (TCG)")
    spec = BootSpec(la57=False, mem_mib=768, append="crashkernel=192M")
    with Guest(k, spec, work / "guest") as g:
        banner("inside the guest: mmrwatch report --live (its own /proc/kcore; QEMU has no UV hub)")
        rc, out, err = g.run(f"{sys.executable} -m mmrwatch report --live", timeout=600,
                             check=False)
        print(out, end="")
        print(err, end="", file=sys.stderr)
        banner("simulating a healthy UV4 machine: hub state written into the running kernel")
        inject(g, lambda gm: make_uv(gm, Personality("UV4")))
        g.pause()
        healthy = g.dump(work / "healthy.elf")
        g.resume()
        rc_ok = _report(healthy)
        banner("the 2016 failure: firmware lists LOCAL_MMR as EFI runtime MMIO, EFI maps it "
               "1:1, the kernel's direct map lacks it")

        def regression(gm: GuestMemory) -> None:
            base = gm.facts.page_offset_base
            gm.unmap_2m(gm.root("init_mm"), base + 0xFA000000, 32 << 20)
            gm.map_2m(gm.root("efi_mm"), 0xFA000000, 0xFA000000, 32 << 20, EFI_UCMINUS)
            gm.add_runtime_mmio(0xFA000000, 32 << 20)
        inject(g, regression)
        g.pause()
        broken = g.dump(work / "broken.elf")
        g.resume()
    rc_bad = _report(broken)
    banner("the firmware's table vs the kernel's: mmrwatch ptdump --mm efi (first lines)")
    pt = subprocess.run([sys.executable, "-m", "mmrwatch", "ptdump", "--vmcore", str(broken),
                         "--mm", "efi"], capture_output=True, text=True)
    print("\n".join(pt.stdout.splitlines()[:12]) + "\n...")
    for d in (healthy, broken):
        d.unlink()
    log(f"demo finished in {time.monotonic() - t0:.0f} s (work files in {work})")
    return 0 if rc == 0 and rc_ok == 0 and rc_bad == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
