"""Debug-info benchmark: DWARF vs BTF + kallsyms on the same dumps (one run, printed).

For each dump (Debian 12's 6.1 kernel, the UV test kernel, Debian 11's 5.10 with its
System.map): wall time to verdict and peak RSS of ``mmrwatch report``, with a warm page
cache (median of interleaved rounds) and a cold one (caches dropped before each run; needs
root), then the daemon (``serve --vmcore``, checking every second): RSS after its first
check and in steady state.  Goals (issue 13): report peak RSS <= 1/4 of DWARF's, wall time
<= DWARF's warm, daemon steady state <= 60 MiB.

Run: ``.venv/bin/python -m tests.bench.debuginfo``
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.bed.boots import BedSession

ROUNDS = 3
MMRWATCH = [sys.executable, "-m", "mmrwatch"]


def _run(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one CLI run, from the child's own rusage."""
    t0 = time.perf_counter()
    p = subprocess.Popen(MMRWATCH + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in (0, 1, 2):
        raise RuntimeError(f"{args}: exit {p.returncode}: {p.stderr.read().decode()[-500:]}")
    return wall, ru.ru_maxrss * 1024


def _drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def report_costs(name: str, dump: Path, modes: dict[str, list[str]]) -> None:
    args = ["report", "--vmcore", str(dump), "--format", "json"]
    for extra in modes.values():
        _run(args + extra)                                  # warm everything once
    warm: dict[str, list[tuple[float, int]]] = {m: [] for m in modes}
    for _ in range(ROUNDS):                                 # interleaved rounds
        for m, extra in modes.items():
            warm[m].append(_run(args + extra))
    cold: dict[str, tuple[float, int]] = {}
    for m, extra in modes.items():
        if not _drop_caches():
            break
        cold[m] = _run(args + extra)
    med = {m: (statistics.median(w for w, _ in v), max(r for _, r in v)) for m, v in warm.items()}
    dw, bt = med["dwarf"], med["btf"]
    print(f"{name}: report, warm (median of {ROUNDS}): DWARF {dw[0]:.2f} s / {dw[1] >> 20} MiB, "
          f"BTF {bt[0]:.2f} s / {bt[1] >> 20} MiB -> time {bt[0] / dw[0]:.2f}x, "
          f"peak RSS {bt[1] / dw[1]:.2f}x (goals <= 1.00x, <= 0.25x)")
    if cold:
        print(f"{name}: report, cold cache: DWARF {cold['dwarf'][0]:.2f} s, BTF "
              f"{cold['btf'][0]:.2f} s -> {cold['btf'][0] / cold['dwarf'][0]:.2f}x")
    else:
        print(f"{name}: report, cold cache: not measured (dropping caches needs root)")


def daemon_costs(name: str, dump: Path, modes: dict[str, list[str]], seconds: float = 15) -> None:
    for m, extra in modes.items():
        with tempfile.TemporaryDirectory() as tmp:
            prom = Path(tmp, "m.prom")
            p = subprocess.Popen(MMRWATCH + ["serve", "--vmcore", str(dump), "--textfile",
                                             str(prom), "--interval", "1", *extra],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                proc = psutil.Process(p.pid)
                t0 = time.monotonic()
                while not prom.exists() and time.monotonic() - t0 < 120:
                    time.sleep(0.05)
                first = proc.memory_info().rss
                time.sleep(seconds)
                steady = proc.memory_info().rss
                runs = [ln for ln in prom.read_text().splitlines()
                        if ln.startswith("mmrwatch_collector_runs_total")]
            finally:
                p.terminate()
                p.wait(30)
        print(f"{name}: daemon ({m}): RSS {first >> 20} MiB after the first check, "
              f"{steady >> 20} MiB after {seconds:.0f} s ({runs[0].split()[-1]} checks)"
              + (" (goal <= 60 MiB)" if m == "btf" else ""))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mmrwatch-bench-"))
    bed = BedSession(work)
    cases = []
    for boot in ("debian-l5", "uv-l4", "bullseye-l4"):
        b = bed.boot(boot)
        btf = ["--debug-info", "btf"]
        if b.kernel.release.startswith("5."):
            btf += ["--system-map", str(b.kernel.system_map)]
        cases.append((f"{boot} ({b.kernel.release})", b.elf,
                      {"dwarf": ["--vmlinux", str(b.kernel.vmlinux)], "btf": btf}))
    for name, dump, modes in cases:
        report_costs(name, dump, modes)
    name, dump, modes = cases[0]
    daemon_costs(name, dump, modes)


if __name__ == "__main__":
    main()
