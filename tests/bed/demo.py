"""The README's first command: mmrwatch's main job on a real kernel, from nothing.

First the stock Debian 12 kernel under QEMU + OVMF: the live EFI runtime audit inside the
guest on its own /proc/kcore, a dump of it checked, and ``ptdump`` of the firmware's table
(efi_mm).  Cold, the UV-enabled kernel builds in the background meanwhile (~15 min on 2
cores), with a progress line, so the first real result comes within minutes.  Then the UV
part: the UV kernel booted, checked live, turned into a simulated UV4 machine (hub state
written into the running kernel), a crash dump of it checked, the 2016 failure injected
and its finding shown.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .cache import log
from .kernels import debian_kernel, uv_kernel
from .qemu import BootSpec, Guest
from .uvbuild import Build, cached
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


def _live(g: Guest) -> int:
    """``mmrwatch report --live`` inside the guest, on its own /proc/kcore, shown."""
    rc, out, err = g.run(f"{sys.executable} -m mmrwatch report --live", timeout=600,
                         check=False)
    print(out, end="")
    print(err, end="", file=sys.stderr)
    return rc


def _ptdump_head(dump: Path, lines: int = 12) -> None:
    pt = subprocess.run([sys.executable, "-m", "mmrwatch", "ptdump", "--vmcore", str(dump),
                         "--mm", "efi"], capture_output=True, text=True)
    print("\n".join(pt.stdout.splitlines()[:lines]) + "\n...")


def debian_part(work: Path, build: Optional[Build]) -> bool:
    """The stock kernel: no UV, but real firmware, so the EFI runtime audit is real."""
    k = debian_kernel()
    banner(f"booting Debian 12's own kernel {k.release} under QEMU + OVMF (TCG)")
    with Guest(k, BootSpec(la57=False, mem_mib=768), work / "debian") as g:
        banner("inside the guest: mmrwatch report --live (the EFI runtime regions the "
               "firmware lists, checked in efi_mm and init_mm)")
        rc = _live(g)
        with g.paused():
            dump = g.dump(work / "debian.elf")
    if build is not None:
        print(build.progress(), file=sys.stderr)
    banner("the same kernel from a crash dump: mmrwatch report --vmcore")
    rc_dump = _report(dump)
    banner("the firmware's table: mmrwatch ptdump --mm efi (first lines)")
    _ptdump_head(dump)
    dump.unlink()
    return rc == 0 and rc_dump == 0


def uv_part(work: Path) -> bool:
    k = uv_kernel()
    banner(f"booting the UV-enabled kernel {k.release} under QEMU + OVMF (TCG)")
    spec = BootSpec(la57=False, mem_mib=768, append="crashkernel=192M")
    with Guest(k, spec, work / "guest") as g:
        banner("inside the guest: mmrwatch report --live (its own /proc/kcore; QEMU has no UV hub)")
        rc = _live(g)
        banner("simulating a healthy UV4 machine: hub state written into the running kernel")
        inject(g, lambda gm: make_uv(gm, Personality("UV4")))
        with g.paused():
            healthy = g.dump(work / "healthy.elf")
        rc_ok = _report(healthy)
        banner("the 2016 failure: firmware lists LOCAL_MMR as EFI runtime MMIO, EFI maps it "
               "1:1, the kernel's direct map lacks it")

        def regression(gm: GuestMemory) -> None:
            base = gm.facts.page_offset_base
            gm.unmap_2m(gm.root("init_mm"), base + 0xFA000000, 32 << 20)
            gm.map_2m(gm.root("efi_mm"), 0xFA000000, 0xFA000000, 32 << 20, EFI_UCMINUS)
            gm.add_runtime_mmio(0xFA000000, 32 << 20)
        inject(g, regression)
        with g.paused():
            broken = g.dump(work / "broken.elf")
    rc_bad = _report(broken)
    banner("the firmware's table vs the kernel's: mmrwatch ptdump --mm efi (first lines)")
    _ptdump_head(broken)
    for d in (healthy, broken):
        d.unlink()
    return rc == 0 and rc_ok == 0 and rc_bad == 2


def main() -> int:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the background build stops too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mmrwatch-demo-"))
    build = None if cached() else Build()
    if build is not None:
        log(f"the UV-enabled kernel is not cached: building it in the background (log: "
            f"{build.log}); the stock Debian kernel comes first")
    try:
        ok = debian_part(work, build)
        if build is not None:
            banner("waiting for the UV-enabled kernel build")
            if build.wait() != 0:
                log(f"the UV kernel build failed; last lines of {build.log}:\n" +
                    "\n".join(build.log.read_text().splitlines()[-20:]))
                return 1
        ok = uv_part(work) and ok
    finally:
        if build is not None:
            build.stop()
    log(f"demo finished in {time.monotonic() - t0:.0f} s (work files in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
