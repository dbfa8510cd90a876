"""``python -m tests.fuzz``: run many corruptions and print counts by outcome.

    .venv/bin/python -m tests.fuzz --count 100000 [--seed N] [--kind tables|dumps|ranges|all]
                                   [--jobs 2] [--cli-every 250] [--show 2] [--failures FILE]
    .venv/bin/python -m tests.fuzz --replay KIND:SEED [--cli] [--keep DIR]

Case ``i`` of a run is kind ``KINDS[i % 3]`` (or the one ``--kind``) with seed
``N * 10**7 + i``; every ``--cli-every``-th case of each kind runs through the CLI as a
subprocess, the rest in process.  Workers (``--jobs``, default 2) send back counts and the
failures; a worker whose case outlives the in-process alarm by 60 s is killed and that case
counted as a hang.  Exit status 1 when any case failed.  Ctrl-C (SIGINT) or SIGTERM stops
the run and prints the counts of the cases done so far ("interrupted: N cases").  ``--replay`` reruns one case in
the foreground and prints its corruption, outcome and traceback; with ``--keep DIR`` the
inputs (vmcore, BTF, System.map, ranges file) stay in DIR with the command that reads them.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import queue
import re
import sys
import time
import traceback

from tests.fuzz import harness

HANG = harness.LIMIT * harness.WALL_FACTOR + 60   # wall seconds without progress: killed
CHUNK = 40


def plan(count: int, seed: int, kind: str, cli_every: int) -> list[tuple[str, int, bool]]:
    kinds = harness.KINDS if kind == "all" else (kind,)
    out = []
    for i in range(count):
        k = kinds[i % len(kinds)]
        nth = i // len(kinds)
        out.append((k, seed * 10 ** 7 + i, bool(cli_every) and nth % cli_every == cli_every - 1))
    return out


def signature(o: harness.Outcome) -> str:
    """What makes two failures the same bug: the exception and the innermost frame of
    mmrwatch's own code (or the exit code and the last stderr line of a CLI run)."""
    if o.cli:
        last = [ln for ln in o.trace.splitlines() if ln.strip()][-1:] or [o.detail]
        text = re.sub(r"0x[0-9a-fA-F]+", "0x_", f"{o.detail.split(';')[0]} | {last[0][:120]}")
        return f"cli: {text}"
    if o.detail.startswith(("over ", "took ")):
        return f"{o.kind}: over {harness.LIMIT:.0f} s"
    frames = [ln.strip() for ln in o.trace.splitlines() if ln.strip().startswith("File ")]
    ours = [f for f in frames if "/collectors/" in f or "/agent/" in f or "/tests/fuzz/" in f]
    where = ours[-1] if ours else (frames[-1] if frames else "")
    where = where.replace(os.getcwd() + "/", "")
    exc = o.detail.split(":")[0]
    return f"{exc} at {where}"


class Totals:
    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()   # (kind, cli, sub, cls)
        self.seconds: collections.Counter = collections.Counter()  # (kind, cli)
        self.slowest: dict[tuple[str, bool], tuple[float, str]] = {}
        self.fails: dict[str, list[harness.Outcome]] = {}
        self.log = None                     # --failures FILE: every failure, JSON lines
        self.failed: list[tuple[str, int, bool]] = []
        self.anomalies: dict[str, list[harness.Outcome]] = {}
        self.done = 0

    def add(self, o: harness.Outcome, keep: int = 3) -> None:
        self.done += 1
        self.counts[(o.kind, o.cli, o.sub, o.cls)] += 1
        self.seconds[(o.kind, o.cli)] += o.seconds
        key = (o.kind, o.cli)
        if o.seconds > self.slowest.get(key, (-1, ""))[0]:
            self.slowest[key] = (o.seconds, o.case)
        if o.cls == "fail":
            self.failed.append((o.kind, o.seed, o.cli))
            if self.log is not None:
                self.log.write(json.dumps({"case": o.case, "kind": o.kind, "seed": o.seed,
                                           "cli": o.cli, "sub": o.sub, "signature": signature(o),
                                           "detail": o.detail, "recipe": o.recipe,
                                           "command": o.command, "trace": o.trace}) + "\n")
            self.fails.setdefault(signature(o), []).append(o)
            del self.fails[signature(o)][keep + 1:]        # the count is kept separately
            self.counts[("#fail", signature(o))] += 1
        for a in o.anomalies:
            sig = a[:70]
            self.anomalies.setdefault(sig, []).append(o)
            del self.anomalies[sig][keep:]
            self.counts[("#anomaly", sig)] += 1


def worker(tasks: mp.Queue, results: mp.Queue, beat: str) -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        item = tasks.get()
        if item is None:
            harness.cleanup()
            return
        chunk_id, cases = item
        outs = []
        for j, (kind, seed, cli) in enumerate(cases):
            with open(beat, "w") as f:
                f.write(f"{chunk_id} {j} {time.monotonic()}")
            try:
                o = harness.run_case(kind, seed, cli)
            except BaseException:                      # noqa: BLE001
                o = harness.Outcome(kind, seed, cli, "harness", "fail", "harness error",
                                    trace=traceback.format_exc())
            o.trace = o.trace[-6000:]
            outs.append(o)
        results.put((chunk_id, os.getpid(), outs))


def run_all(cases: list, jobs: int, progress: bool = True, log=None) -> Totals:
    tot = Totals()
    tot.log = log
    ctx = mp.get_context("fork")
    tasks, results = ctx.Queue(), ctx.Queue()
    chunks = {i: cases[s:s + CHUNK] for i, s in enumerate(range(0, len(cases), CHUNK))}
    for i, c in chunks.items():
        tasks.put((i, c))
    beatdir = harness.tmpdir()
    procs: dict[int, tuple[mp.Process, str]] = {}

    def spawn(n: int) -> None:
        beat = os.path.join(beatdir, f"beat-{n}")
        p = ctx.Process(target=worker, args=(tasks, results, beat), daemon=True)
        p.start()
        procs[n] = (p, beat)

    for n in range(jobs):
        spawn(n)
    pending, t0, last = set(chunks), time.monotonic(), 0.0
    spawned = jobs
    tot.interrupted = False                  # type: ignore[attr-defined]
    try:
        while pending:
            try:
                chunk_id, _pid, outs = results.get(timeout=2)
                if chunk_id in pending:
                    pending.discard(chunk_id)
                    for o in outs:
                        tot.add(o)
            except queue.Empty:
                pass
            now = time.monotonic()
            for n, (p, beat) in list(procs.items()):
                try:
                    cid, j, start = open(beat).read().split()
                except (OSError, ValueError):
                    continue
                if int(cid) in pending and now - float(start) > HANG:
                    p.kill()
                    p.join()
                    harness.cleanup(p.pid)
                    os.unlink(beat)
                    kind, seed, cli = chunks[int(cid)][int(j)]
                    tot.add(harness.Outcome(kind, seed, cli, "hang", "fail",
                                            f"hang: no answer after {HANG:.0f} s (the alarm "
                                            "did not interrupt it)", now - float(start)))
                    rest = chunks[int(cid)][int(j) + 1:]
                    pending.discard(int(cid))
                    if rest:
                        new = max(chunks) + 1
                        chunks[new] = rest
                        pending.add(new)
                        tasks.put((new, rest))
                    del procs[n]
                    spawn(spawned)
                    spawned += 1
            if progress and now - last > 15:
                last = now
                rate = tot.done / max(now - t0, 1e-9)
                print(f"  {tot.done}/{len(cases)} cases, {now - t0:.0f} s, {rate:.0f}/s, "
                      f"{sum(v for k, v in tot.counts.items() if k[0] == '#fail')} failures",
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        # Ctrl-C: report the cases done so far; the workers' chunks in flight are dropped
        tot.interrupted = True               # type: ignore[attr-defined]
        tasks.cancel_join_thread()           # the queued chunks must not block the exit
        for p, _ in procs.values():
            p.kill()
    finally:
        for _ in procs:
            tasks.put(None)
        for p, beat in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
            harness.cleanup(p.pid)
            try:
                os.unlink(beat)
            except OSError:
                pass
        harness.cleanup()                       # the heartbeat files' directory
    tot.wall = time.monotonic() - t0            # type: ignore[attr-defined]
    return tot


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM end the run with the counts so far (a shell's background job has
    SIGINT ignored, so both are set here)."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def report(tot: Totals, show: int) -> str:
    c = tot.counts
    out = []
    by_cls = collections.Counter()
    for (kind, cli, sub, cls), n in ((k, v) for k, v in c.items() if not k[0].startswith("#")):
        by_cls[cls] += n
    out.append("by outcome: " + "  ".join(f"{k} {by_cls[k]}" for k in harness.CLASSES))
    out.append("")
    hdr = f"{'kind':<8} {'mode':<8} {'cases':>7} " + " ".join(f"{k:>10}" for k in harness.CLASSES) \
        + f" {'mean ms':>8} {'slowest':>8}"
    out.append(hdr)
    keys = sorted({(k[0], k[1]) for k in c if not k[0].startswith("#")})
    for kind, cli in keys:
        row = {cls: sum(v for k, v in c.items() if k[:2] == (kind, cli) and k[3] == cls)
               for cls in harness.CLASSES}
        n = sum(row.values())
        mean = tot.seconds[(kind, cli)] / max(n, 1) * 1e3
        slow = tot.slowest.get((kind, cli), (0, ""))
        out.append(f"{kind:<8} {'cli' if cli else 'in-proc':<8} {n:>7} "
                   + " ".join(f"{row[k]:>10}" for k in harness.CLASSES)
                   + f" {mean:>8.1f} {slow[0]:>7.2f}s")
    out.append("")
    out.append("by sub-kind (first corruption):")
    subs = sorted({(k[0], k[2]) for k in c if not k[0].startswith("#")})
    for kind, sub in subs:
        row = {cls: sum(v for k, v in c.items() if not k[0].startswith("#")
                        and (k[0], k[2]) == (kind, sub) and k[3] == cls) for cls in harness.CLASSES}
        out.append(f"  {kind + '/' + sub:<22} " + "  ".join(f"{k} {row[k]}" for k in harness.CLASSES
                                                            if row[k]))
    fails = sorted(((v, k[1]) for k, v in c.items() if k[0] == "#fail"), reverse=True)
    out.append("")
    out.append(f"failures: {sum(v for v, _ in fails)} in {len(fails)} distinct signatures")
    for n, sig in fails:
        out.append(f"\n[{n} x] {sig}")
        for o in tot.fails[sig][:show]:
            out.append(o.describe())
    anomalies = sorted(((v, k[1]) for k, v in c.items() if k[0] == "#anomaly"), reverse=True)
    if anomalies:
        out.append("")
        out.append(f"anomalies (not failures): {sum(v for v, _ in anomalies)}")
        for n, sig in anomalies:
            out.append(f"\n[{n} x] {sig}")
            for o in tot.anomalies[sig][:1]:
                out.append(o.describe())
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kind", choices=("tables", "dumps", "ranges", "all"), default="all")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--cli-every", type=int, default=250,
                   help="every Nth case of each kind through the CLI (0: none)")
    p.add_argument("--show", type=int, default=2, help="reproductions shown per failure kind")
    p.add_argument("--failures", metavar="FILE", help="write every failure (JSON lines)")
    p.add_argument("--real-every", type=int, default=None,
                   help="every Nth dumps case corrupts a real dump (/tmp/bedwork/*/vmcore.elf, "
                        "copied once per worker to /var/tmp) when one exists; default 500, "
                        "0: never")
    p.add_argument("--replay", metavar="KIND:SEED")
    p.add_argument("--cli", action="store_true", help="with --replay: through the CLI")
    p.add_argument("--keep", metavar="DIR", help="with --replay: keep the inputs in DIR")
    a = p.parse_args(argv)
    import glob
    have_real = any(os.access(f, os.R_OK) for f in glob.glob("/tmp/bedwork/*/vmcore.elf"))
    harness.REAL_EVERY = (500 if have_real else 0) if a.real_every is None else a.real_every
    if a.replay:
        kind, seed = a.replay.split(":")
        if a.keep:
            os.makedirs(a.keep, exist_ok=True)
        try:
            o = harness.run_case(kind, int(seed), a.cli, a.keep)
        finally:
            harness.cleanup()
        print(o.describe())
        if o.trace and len(o.trace.splitlines()) > 25:
            print("\nfull traceback:\n" + o.trace)
        return 1 if o.cls == "fail" else 0
    cases = plan(a.count, a.seed, a.kind, a.cli_every)
    ncli = sum(c[2] for c in cases)
    print(f"mmrwatch fuzz: {len(cases)} cases ({len(cases) - ncli} in process, {ncli} through "
          f"the CLI), seed {a.seed}, kind {a.kind}, {a.jobs} workers"
          + (f", every {harness.REAL_EVERY}th dumps seed on a real dump" if harness.REAL_EVERY
             else ""), flush=True)
    log = open(a.failures, "w") if a.failures else None
    _stop_on_signals()
    try:
        tot = run_all(cases, a.jobs, log=log)
    finally:
        if log is not None:
            log.close()
    print(f"{'interrupted' if tot.interrupted else 'done'}: {tot.done} cases in "
          f"{tot.wall:.0f} s ({tot.done / max(tot.wall, 1e-9):.0f} cases/s)\n")
    print(report(tot, a.show))
    return 1 if any(k[0] == "#fail" for k in tot.counts) else 0


if __name__ == "__main__":
    sys.exit(main())
