"""Named boots of the test bed, each producing dumps (and ground truth) once per session.

A test asks for ``session.boot("debian-l4-efidebug")`` and gets a ``BootResult`` with the
dump paths; the guest is booted, captured and stopped at most once per pytest session no
matter how many tests use it.  UV-kernel boots also capture the kernel's own ptdump output
(``/sys/kernel/debug/page_tables/{kernel,efi}``) right before the dump, with the guest
paused between capture and dump.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

from .cache import log
from .kernels import UV_TAGS, Kernel, bullseye_kernel, debian_kernel, uv_kernel
from .qemu import BootSpec, Guest
from .truth import capture as capture_truth


@dataclass(frozen=True)
class BootPlan:
    kernel: str                      # a KERNELS key: "debian", "uv" (6.1), "uv612", ...
    spec: BootSpec
    kdump_format: bool = False       # also take a kdump-compressed dump
    truth: bool = False              # capture the kernel's own ptdump first
    real_kdump: bool = False         # finally crash it and keep the capture kernel's dump


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a forwarded guest service."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NET_PORT = free_port()
AGENT_PORT = free_port()            # host side of the guest agent's 19864
PLANS: dict[str, BootPlan] = {
    "debian-l5": BootPlan("debian", BootSpec(la57=True, mem_mib=512), kdump_format=True),
    "debian-l4-efidebug": BootPlan("debian", BootSpec(la57=False, append="efi=debug",
                                                      mem_mib=512)),
    "debian-noruntime": BootPlan("debian", BootSpec(la57=False, append="efi=noruntime",
                                                    mem_mib=512)),
    # Debian 11's 5.10: before kallsyms in VMCOREINFO (6.0), so dumps need --system-map
    "bullseye-l4": BootPlan("debian-bullseye", BootSpec(la57=False, mem_mib=512)),
    "debian-seabios": BootPlan("debian", BootSpec(firmware="seabios", la57=False, mem_mib=512)),
    "uv-l5": BootPlan("uv", BootSpec(la57=True, mem_mib=512, hostfwd=(NET_PORT, 19864)),
                      truth=True),
    "uv-l4": BootPlan("uv", BootSpec(la57=False, mem_mib=512), truth=True),
    "uv-l4-efidebug": BootPlan("uv", BootSpec(la57=False, append="efi=debug", mem_mib=512)),
    "uv-noruntime": BootPlan("uv", BootSpec(la57=True, append="efi=noruntime", mem_mib=512)),
    "uv-seabios": BootPlan("uv", BootSpec(firmware="seabios", la57=True, mem_mib=512)),
    "uv-inject": BootPlan("uv", BootSpec(la57=False, mem_mib=768,
                                         append="crashkernel=192M")),
    # as uv-inject, ending in a real kdump (the pool in the printk buffer's tail survives)
    "uv-inject-kdump": BootPlan("uv", BootSpec(la57=False, mem_mib=768,
                                               append="crashkernel=192M log_buf_len=16M"),
                                real_kdump=True),
    # no test-bed cache in the guest: no vmlinux anywhere, the agent runs on BTF + kallsyms
    "uv-agent": BootPlan("uv", BootSpec(la57=False, mem_mib=768, append="crashkernel=192M",
                                        hostfwd=(AGENT_PORT, 19864), cache_share=False)),
    # oops=panic: a kernel-mode page fault in process context panics (and kdumps)
    "uv-efifault": BootPlan("uv", BootSpec(la57=False, mem_mib=768,
                                           append="crashkernel=192M oops=panic"),
                            real_kdump=True),
    # 8 NUMA nodes (nr_node_ids 8) for multi-blade personalities; UV state injected into
    # the big printk buffer's tail survives into the real kdump.  crashkernel= must fit in
    # one node (memblock splits free ranges at node boundaries): 8 x 192 MiB nodes.
    "uv-numa": BootPlan("uv", BootSpec(la57=True, mem_mib=1536,
                                       append="numa=fake=8 crashkernel=160M log_buf_len=16M"),
                        real_kdump=True),
    "uv-kdump": BootPlan("uv", BootSpec(la57=True, mem_mib=768, append="crashkernel=192M"),
                         real_kdump=True),
}
# Every UV plan also runs on the 6.12 UV kernel (issue 14), as "uv612-<same suffix>": the
# same boot, another generation of uv_system_init_hub() (one hub info per blade, v6.5+)
UV_KERNELS = {tag: series for series, tag in UV_TAGS.items()}     # {"uv": "6.1", ...}
PLANS.update({f"uv612-{name[3:]}": replace(plan, kernel="uv612")
              for name, plan in list(PLANS.items()) if plan.kernel == "uv"})
KERNELS: dict[str, Callable[[], Kernel]] = {
    "debian": debian_kernel, "debian-bullseye": bullseye_kernel,
    **{tag: (lambda s=series: uv_kernel(s)) for tag, series in UV_KERNELS.items()}}


@dataclass
class BootResult:
    name: str
    kernel: Kernel
    plan: BootPlan
    dir: Path
    elf: Path
    kdump: Optional[Path] = None
    real_kdump: Optional[Path] = None
    truth: dict[str, str] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)   # what the guest said about itself


GUEST_FACTS = r"""
echo "release=$(uname -r)"
echo "cmdline=$(cat /proc/cmdline)"
echo "efi=$( [ -d /sys/firmware/efi ] && echo yes || echo no)"
echo "runtime_map=$(ls /sys/firmware/efi/runtime-map 2>/dev/null | wc -l)"
echo "runtime_attrs=$(cat /sys/firmware/efi/runtime-map/*/attribute 2>/dev/null | tr '\n' ' ')"
"""


def capture(guest: Guest, plan: BootPlan, out: Path) -> BootResult:
    """Collect facts (+ the kernel's own ptdump, consistent with the dump: truth.py), then
    pause, dump, and resume the guest."""
    res = BootResult("", guest.kernel, plan, out, out / "vmcore.elf")
    _, so, _ = guest.run(GUEST_FACTS)
    res.facts = dict(line.split("=", 1) for line in so.splitlines() if "=" in line)

    def dump() -> None:
        guest.dump(res.elf, "elf")
        if plan.kdump_format:
            res.kdump = guest.dump(out / "vmcore.kdump", "kdump-zlib")
    if plan.truth:
        res.truth = capture_truth(guest, dump)
        for mm, text in res.truth.items():
            (out / f"truth-{mm}.txt").write_text(text)
    else:
        with guest.paused():
            dump()
    (out / "facts.json").write_text(json.dumps(res.facts, indent=1))
    return res


class BedSession:
    """Lazily boots each plan once, keeps its results, reuses them for every test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._results: dict[str, BootResult] = {}

    def kernel(self, name: str) -> Kernel:
        return KERNELS[name]()

    def boot(self, name: str, keep: Optional[Callable[[Guest, BootResult], None]] = None
             ) -> BootResult:
        """Dumps of boot ``name``; ``keep`` runs extra work while the guest is still up."""
        if name in self._results and keep is None:
            return self._results[name]
        plan = PLANS[name]
        out = self.workdir / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        guest = Guest(self.kernel(plan.kernel), plan.spec, out / "guest")
        with guest:
            res = capture(guest, plan, out)
            res.name = name
            if keep is not None:
                keep(guest, res)
            if plan.real_kdump:
                res.real_kdump = guest.kdump(out / "real.kdump")
        log(f"{name}: dumps ready in {out}")
        self._results[name] = res
        return res
