"""Boot a test-bed kernel under QEMU (q35, TCG) with OVMF or SeaBIOS, and drive it.

A ``Guest`` has: a serial log, a QMP socket, guest RAM backed by a host file (so tests can
read and write guest-physical memory), a 9p exchange directory for running commands inside
the guest, read-only 9p shares of the host's /usr, Python prefix, venv and repo (the
project runs inside the guest exactly as installed on the host), and optionally a host
``127.0.0.1`` port forwarded to the guest.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from .cache import cache_root, log
from .initramfs import build as build_initramfs
from .kernels import Kernel

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"

# On every guest's command line: under TCG on a loaded host the kernel's IO-APIC timer test
# (check_timer()) can miss its busy-wait window and panic, "IO-APIC + timer doesn't work!"
# (seen once with five test streams booting guests on two cores).  The test is for broken
# timer wiring, which QEMU's is not; virtual machines commonly boot with it off.
TCG_CMDLINE = "no_timer_check"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class BootSpec:
    """How to boot: firmware, paging depth, command line, memory, forwarded port."""

    firmware: str = "ovmf"           # "ovmf" or "seabios"
    la57: bool = True                # 5-level paging (TCG's -cpu max has LA57)
    append: str = ""
    mem_mib: int = 1024
    smp: int = 2
    hostfwd: Optional[tuple[int, int]] = None   # (host port on 127.0.0.1, guest port)
    extra_shares: dict[str, str] = field(default_factory=dict)
    cache_share: bool = True         # False: the guest cannot see the host's test-bed cache
                                     # (kernels, vmlinux files), e.g. to prove no DWARF is used


def reclaim_stale_ram(shm: Path = Path("/dev/shm")) -> list[Path]:
    """Remove guest RAM files left by test processes that died without stopping their guest
    (each is the size of a guest's memory and lives in tmpfs)."""
    gone = []
    for f in shm.glob("mmrwatch-*-*.ram"):
        try:
            pid = int(f.name.split("-")[1])
        except ValueError:
            continue
        if not Path(f"/proc/{pid}").exists():
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone


def default_shares() -> dict[str, str]:
    """Host directories the guest sees at the same paths (read-only)."""
    shares = {"pyprefix": sys.base_prefix, "repo": str(REPO), "cache": str(cache_root())}
    if sys.prefix != sys.base_prefix:
        shares["venv"] = sys.prefix
    shares = {k: v for k, v in shares.items() if not v.startswith("/usr/") and v != "/usr"}
    # a share inside another one (the venv in the repo's .venv) is already visible
    return {k: v for k, v in shares.items()
            if not any(v != o and v.startswith(o.rstrip("/") + "/") for o in shares.values())}


class QMP:
    """A minimal QMP client (one command at a time, events skipped)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.f = self.sock.makefile("rw")
        json.loads(self.f.readline())          # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args) -> dict:
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError(f"QMP closed during {name}")
            msg = json.loads(line)
            if "event" in msg:
                continue
            if "error" in msg:
                raise RuntimeError(f"QMP {name}: {msg['error']}")
            return msg.get("return", {})

    def close(self) -> None:
        self.sock.close()


class Guest:
    """A running QEMU guest; use as a context manager."""

    _ids = itertools.count()

    def __init__(self, kernel: Kernel, spec: BootSpec = BootSpec(), workdir: Optional[Path] = None):
        self.kernel, self.spec = kernel, spec
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="mmrwatch-guest-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.xfer = self.dir / "xfer"
        self.xfer.mkdir(exist_ok=True)
        self.console = self.dir / "console.log"
        self.qmp_path = self.dir / "qmp.sock"
        self.ram_path = Path(f"/dev/shm/mmrwatch-{os.getpid()}-{next(self._ids)}.ram")
        self.proc: Optional[subprocess.Popen] = None
        self._qmp: Optional[QMP] = None
        self._n = itertools.count()
        self.boot_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def _cmdline(self) -> list[str]:
        s = self.spec
        shares = {"xfer": str(self.xfer)}
        guest_shares = {**default_shares(), **s.extra_shares}
        if not s.cache_share:
            guest_shares.pop("cache", None)
        initrd = build_initramfs(self.kernel, guest_shares)
        cpu = "max" if s.la57 else "max,la57=off"
        cmd = ["qemu-system-x86_64", "-machine", "q35,memory-backend=ram0", "-accel", "tcg",
               "-cpu", cpu, "-smp", str(s.smp), "-m", f"{s.mem_mib}M",
               "-object", f"memory-backend-file,id=ram0,size={s.mem_mib}M,"
                          f"mem-path={self.ram_path},share=on",
               "-kernel", str(self.kernel.bzimage), "-initrd", str(initrd),
               "-append", f"console=ttyS0 panic=-1 loglevel=6 {TCG_CMDLINE} {s.append}".strip(),
               "-device", "vmcoreinfo", "-display", "none", "-monitor", "none",
               "-serial", f"file:{self.console}", "-no-reboot",
               "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if s.firmware == "ovmf":
            vars_copy = self.dir / "OVMF_VARS.fd"
            shutil.copy(OVMF_VARS, vars_copy)
            cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        net = "user,id=n0"
        if s.hostfwd:
            net += f",hostfwd=tcp:127.0.0.1:{s.hostfwd[0]}-:{s.hostfwd[1]}"
        cmd += ["-netdev", net, "-device", "virtio-net-pci,netdev=n0"]
        all_shares = {**{"usr": "/usr"}, **shares, **guest_shares}
        for tag, path in all_shares.items():
            ro = "" if tag == "xfer" else ",readonly=on"
            cmd += ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,"
                               f"multidevs=remap{ro}"]
        return cmd

    BOOT_ATTEMPTS = 2

    def start(self, timeout: float = 300) -> "Guest":
        """Boot and wait for the initramfs' ready line.

        A kernel that dies while booting is booted once more, logged: the 6.12 test kernel
        once died 1.1 s into a boot with "Oops: int3" in sched_clock_cpu(), a breakpoint
        left from a boot-time jump-label patch (text_poke_bp) seen by the other vCPU, which
        we put down to multi-threaded TCG's cross-vCPU code modification (once in the first
        dozen boots; never on 6.1), not to anything under test.  A boot that hangs (no ready
        line within ``timeout``: once a 6.12 guest stalled in RCU, "timer wakeup didn't
        happen", with five test streams on two cores) is killed and booted once more too.
        The failed boot's console is kept as console.boot<N>.log."""
        try:
            return self._boot(timeout)
        except BaseException:    # a failed boot, Ctrl-C, SIGTERM: `with` never reaches __exit__
            self.stop()          # for an __enter__ that raised, so no QEMU may outlive it here
            raise

    def _boot(self, timeout: float) -> "Guest":
        t0 = time.monotonic()
        for attempt in range(1, self.BOOT_ATTEMPTS + 1):
            for stale in (self.console, self.qmp_path):   # a reused work dir must not fool us
                stale.unlink(missing_ok=True)
            reclaim_stale_ram()
            self.proc = subprocess.Popen(self._cmdline(),
                                         stdout=open(self.dir / "qemu.out", "w"),
                                         stderr=subprocess.STDOUT, start_new_session=True)
            try:
                self.wait_console("MMRWATCH-READY", timeout)
                break
            except (RuntimeError, TimeoutError):     # QEMU exited (panic=-1), or a boot hung
                if attempt == self.BOOT_ATTEMPTS:    # (an RCU stall of a starved TCG timer)
                    raise
                self.stop()
                died = self.console.read_text(errors="replace")
                self.console.replace(self.dir / f"console.boot{attempt}.log")
                why = next((ln.strip() for ln in died.splitlines() if "Oops" in ln or
                            "Kernel panic" in ln or "rcu:" in ln), "no panic line")
                log(f"{self.kernel.name} kernel died while booting ({why}): booting again")
        self.boot_seconds = time.monotonic() - t0
        log(f"{self.kernel.name} kernel booted ({self.spec.firmware}, "
            f"{'5' if self.spec.la57 else '4'}-level) in {self.boot_seconds:.1f} s")
        return self

    def _wait(self, done, timeout: float, what: str) -> None:
        """Poll ``done()`` until true; fail early with the console tail if QEMU dies."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.proc.returncode}) waiting for {what}: "
                                   f"{(self.dir / 'qemu.out').read_text()[-2000:]}\n"
                                   f"console tail: {self.console_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {timeout} s: {self.console_tail()}")
            time.sleep(0.05)

    def wait_console(self, text: str, timeout: float) -> None:
        """Wait for ``text`` on the serial console."""
        self._wait(lambda: self.console.exists()
                   and text in self.console.read_text(errors="replace"), timeout, repr(text))

    def wait_file(self, path: Path, timeout: float) -> None:
        """Wait until the guest has created ``path`` in the exchange directory."""
        self._wait(path.exists, timeout, path.name)

    def console_tail(self, n: int = 3000) -> str:
        return self.console.read_text(errors="replace")[-n:] if self.console.exists() else ""

    def stop(self) -> None:
        if self._qmp:
            self._qmp.close()
            self._qmp = None
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.ram_path.unlink(missing_ok=True)

    def __enter__(self) -> "Guest":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- control -----------------------------------------------------------------------------
    @property
    def qmp(self) -> QMP:
        if self._qmp is None:
            self._qmp = QMP(self.qmp_path)
        return self._qmp

    def run(self, script: str, timeout: float = 300, check: bool = True) -> tuple[int, str, str]:
        """Run a shell script inside the guest's sysroot; (rc, stdout, stderr)."""
        n = next(self._n)
        out = self.xfer / "out"
        tmp = self.xfer / "cmd" / f".{n}.tmp"
        tmp.write_text(script + "\n")
        tmp.rename(self.xfer / "cmd" / f"{n}.sh")
        rcf = out / f"{n}.rc"
        self._wait(rcf.exists, timeout, f"exit status of guest command {script[:120]!r}")
        rc = int(rcf.read_text().strip() or "-1")
        so = (out / f"{n}.out").read_text(errors="replace")
        se = (out / f"{n}.err").read_text(errors="replace")
        if check and rc != 0:
            raise RuntimeError(f"guest command failed rc={rc}: {script[:300]}\nstdout: {so[-2000:]}"
                               f"\nstderr: {se[-2000:]}")
        return rc, so, se

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The guest stopped for the block (no guest instruction runs: what is dumped or
        written there is one consistent state), running again after it, whatever happens.
        It may be entered with the guest already stopped (stopping a stopped guest is a
        no-op, e.g. after ``uvinject.inject(resume=False)``); it runs again after the block
        either way."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def pause(self) -> None:
        self.qmp.cmd("stop")

    def resume(self) -> None:
        self.qmp.cmd("cont")

    def dump(self, path: Path, fmt: str = "elf") -> Path:
        """QMP dump-guest-memory (``elf`` or ``kdump-zlib``, the latter made drgn-readable)."""
        from .dumps import fix_qemu_kdump
        path = Path(path)
        raw = path.with_suffix(".flat") if fmt != "elf" else path
        self.qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{raw}", format=fmt)
        if fmt != "elf":
            fix_qemu_kdump(raw, path)
            raw.unlink()
        return path

    def kdump(self, out: Path, timeout: float = 600) -> Path:
        """A real kdump: load a capture kernel, crash via sysrq, let it run makedumpfile.

        Needs ``crashkernel=`` on the command line.  The capture kernel is this same kernel
        and initramfs; its /init notices /proc/vmcore, writes ``vmcore.kdump`` into the
        exchange directory and powers the machine off.
        """
        initrd = build_initramfs(self.kernel, {**default_shares(), **self.spec.extra_shares})
        append = f"console=ttyS0 nr_cpus=1 irqpoll reset_devices panic=-1 loglevel=6 {TCG_CMDLINE}"
        self.run(f"kexec -p '{self.kernel.bzimage}' --initrd='{initrd}' --append='{append}' "
                 "&& cat /sys/kernel/kexec_crash_loaded", timeout=300)
        tmp = self.xfer / "cmd" / ".crash.tmp"
        tmp.write_text("echo c > /proc/sysrq-trigger\n")
        tmp.rename(self.xfer / "cmd" / "crash.sh")
        self.wait_console("MMRWATCH-CAPTURE rc=", timeout)
        self.proc.wait(60)
        log_text = (self.xfer / "kdump.log").read_text(errors="replace") \
            if (self.xfer / "kdump.log").exists() else ""
        src = self.xfer / "vmcore.kdump"
        if not src.exists():
            raise RuntimeError(f"capture kernel wrote no dump: {log_text[-2000:]}\n"
                               f"{self.console_tail()}")
        out = Path(out)
        shutil.move(str(src), out)
        return out

    # -- guest RAM -----------------------------------------------------------------------------
    def ram(self) -> mmap.mmap:
        """The guest's RAM file, mapped shared (offset == GPA below the PCI hole)."""
        with open(self.ram_path, "r+b") as f:
            return mmap.mmap(f.fileno(), 0, mmap.MAP_SHARED)
