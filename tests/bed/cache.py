"""Where the test bed keeps big artefacts, and how it builds each one at most once.

Everything is keyed by exact version (Debian ABI, source package version plus a hash of the
config fragment) so a new kernel never reuses a stale build, and an interrupted build never
leaves a half-written artefact that looks complete: results are published by an atomic
rename of a finished directory, under an exclusive lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator


def cache_root() -> Path:
    """``$MMRWATCH_CACHE`` or ``~/.cache/mmrwatch`` (created on demand)."""
    root = Path(os.environ.get("MMRWATCH_CACHE", Path.home() / ".cache" / "mmrwatch"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Exclusive lock shared by every process building ``name`` (tests run in parallel)."""
    lockdir = cache_root() / "locks"
    lockdir.mkdir(exist_ok=True)
    with open(lockdir / (name.replace("/", "_") + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached(name: str) -> bool:
    """Whether artefact ``name`` is finished in the cache (``provide`` would not build)."""
    return (cache_root() / name / ".done").exists()


def scratch(name: str) -> Path:
    """Where ``provide`` builds ``name`` until it is finished (for progress readers)."""
    final = cache_root() / name
    return final.with_name(f".{final.name}.tmp")


def provide(name: str, build: Callable[[Path], None]) -> Path:
    """Return the finished artefact directory ``name``, building it first if missing.

    ``build(tmpdir)`` fills a scratch directory; only when it returns is the directory renamed
    into place, so a crash mid-build is rebuilt next time instead of being trusted.
    """
    final = cache_root() / name
    if cached(name):
        return final
    with locked(name):
        if cached(name):
            return final
        tmp = scratch(name)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / ".done").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final


def log(msg: str) -> None:
    """Progress for the person waiting (stderr, flushed: builds take minutes)."""
    print(f"[testbed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    """Run a command, failing loudly with its output when it fails."""
    kw.setdefault("check", True)
    return subprocess.run(cmd, shell=isinstance(cmd, str), **kw)


APT_PACKAGES = [
    "qemu-system-x86", "ovmf", "busybox-static", "cpio", "zstd", "xz-utils", "kmod",
    "makedumpfile", "kexec-tools", "linux-source-6.1", "build-essential", "bc", "bison",
    "flex", "libssl-dev", "libelf-dev", "dwarves", "rsync",
]


def have_host_tools() -> str | None:
    """None when the bed can run here, else the reason it cannot (for a local skip)."""
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86 ovmf)"
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        return "OVMF is not installed (apt-get install ovmf)"
    return None
