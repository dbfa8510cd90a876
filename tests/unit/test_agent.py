"""The agent on synthetic kernels: monitor, snapshot, metrics, textfile, systemd notify.

Expected values come from how the synthetic kernel is built (which ranges exist, how big,
which are left unmapped), not from mmrwatch's output.
"""
import os
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from mmrwatch.agent import cliopts, metrics, systemd, textfile
from mmrwatch.agent.monitor import Monitor
from mmrwatch.collectors import engine
from mmrwatch.collectors.target import TargetError
from tests.bed.prom import promtool
from tests.synth import target, uv_kernel

MIB = 1 << 20
UV4_2 = {("LOCAL_MMR", ""): 32 * MIB, ("MMR_HI", "0"): 64 * MIB, ("MMR_HI", "1"): 64 * MIB,
         ("GRU_HI", "0"): 64 * MIB, ("GRU_HI", "1"): 64 * MIB}


def _monitor(k, live=True, **kw) -> Monitor:
    t = target(k, live=live)
    return Monitor(lambda: t, lambda: [engine.uv_source], kw.pop("interval", 300),
                   kw.pop("timeout", 30), **kw)


def _samples(reg) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def test_healthy_uv4_exports_zero_mismatch_and_no_range_series_by_default():
    m = _monitor(uv_kernel("UV4", 2))
    m.run_once()
    h, snap = m.state
    assert h.success and snap.verdict == "ok"
    s = _samples(metrics.registry(lambda: m.state))
    assert _get(s, "mmrwatch_collector_success", collector="pgtable") == 1
    assert _get(s, "mmrwatch_ranges", source="uv") == len(UV4_2)
    for mm in ("init_mm", "efi_mm"):
        assert _get(s, "mmrwatch_unmapped_bytes", mm=mm) == 0
        assert _get(s, "mmrwatch_mismatched_ranges", mm=mm) == 0
    assert not any(k[0].startswith("mmrwatch_range_") for k in s)
    assert _get(s, "mmrwatch_uv_blades") == 2
    s_all = _samples(metrics.registry(lambda: m.state, "all"))
    got = {(dict(k[1])["range"], dict(k[1])["blade"]): v for k, v in s_all.items()
           if k[0] == "mmrwatch_range_size_bytes"}
    # a UV segment carries its pnode (here pnode i holds blade i); other ranges none
    assert {dict(k[1])["pnode"] for k in s_all if k[0] == "mmrwatch_range_size_bytes"} == \
        {"", "0", "1"}
    assert got == UV4_2


def test_unmapped_uv_ranges_are_counted_per_range_and_mm():
    m = _monitor(uv_kernel("UV4", 2, healthy=False))
    m.run_once()
    s = _samples(metrics.registry(lambda: m.state))
    total = sum(UV4_2.values())
    for mm in ("init_mm", "efi_mm"):
        assert _get(s, "mmrwatch_unmapped_bytes", mm=mm) == total
        assert _get(s, "mmrwatch_mismatched_ranges", mm=mm) == len(UV4_2)
        for (rng, blade), size in UV4_2.items():
            assert _get(s, "mmrwatch_range_unmapped_bytes", range=rng, blade=blade,
                        pnode=blade, mm=mm) == size
    assert _get(s, "mmrwatch_range_info", range="LOCAL_MMR", blade="", pnode="", source="uv",
                kind="LOCAL_MMR", start="0xfa000000", end="0xfc000000") == 1
    assert m.state[1].status_line().startswith("LOCAL_MMR missing in efi_mm")


def test_no_virtual_address_in_any_label_or_value():
    k = uv_kernel("UV4", 2, healthy=False)
    m = _monitor(k)
    m.run_once()
    text = generate_latest(metrics.registry(lambda: m.state, "all")).decode()
    assert f"{k.pob:x}" not in text.lower() and str(k.pob) not in text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert s.value < k.pob, (s.name, s.value)
            for v in s.labels.values():
                if v.startswith("0x"):
                    assert int(v, 16) < 1 << 47 and int(v, 16) < k.pob


def test_failures_keep_last_good_data_and_recover():
    k = uv_kernel("UV4", 1)
    good = target(k, live=True)
    outcome = {"n": 0}

    def opener():
        outcome["n"] += 1
        if outcome["n"] == 1:
            raise TargetError("debuginfo", "no debug info for kernel 6.1.0-synthetic")
        return good
    m = Monitor(opener, lambda: [engine.uv_source], 300, 30)
    m.run_once()
    h, snap = m.state
    assert (h.success, h.error_kind, snap) == (False, "debuginfo", None)
    s = _samples(metrics.registry(lambda: m.state))
    assert _get(s, "mmrwatch_collector_success", collector="pgtable") == 0
    assert _get(s, "mmrwatch_collector_error", collector="pgtable", kind="debuginfo") == 1
    assert not any(k[0] in ("mmrwatch_ranges", "mmrwatch_unmapped_bytes") for k in s)
    m.run_once()                                  # debug info installed: opens, succeeds
    assert m.state[0].success and m.state[0].runs == 2 and m.state[0].failures == 1
    ok_snap = m.state[1]
    m.timeout = 1e-9                              # a check that cannot finish in time
    m.run_once()
    h, snap = m.state
    assert (h.success, h.error_kind) == (False, "timeout") and snap is ok_snap
    s = _samples(metrics.registry(lambda: m.state))
    assert _get(s, "mmrwatch_collector_success", collector="pgtable") == 0
    assert _get(s, "mmrwatch_ranges", source="uv") == 3      # last good data kept
    assert outcome["n"] == 2


def test_live_problem_not_seen_by_second_walk_is_not_reported():
    from tests.synth import KERNEL, UC
    k = uv_kernel("UV4", 1, healthy=False)
    t = target(k, live=True)
    res = engine.run_check(t, [engine.uv_source])
    assert res.verdict == "critical"
    for r in res.ranges:                          # the tables change between the two walks
        k.map(k.init_root, k.pob + r.phys, r.phys, r.size, 1 << 21,
              KERNEL | (UC if r.name != "GRU_HI" else 0))
    k.sync_kernel_half()
    first = {r.name: res.findings_of(r) for r in res.ranges}     # grouped before confirm
    again = engine.confirm(res)
    assert again.unconfirmed == 6 and not any(f.problem for f in again.findings)  # 3 ranges x 2 mms
    assert again.verdict == "ok"
    assert all(not f.problem for r in again.ranges for f in again.findings_of(r))
    assert res.verdict == "critical" and res.unconfirmed == 0       # the first result as it was
    assert {r.name: res.findings_of(r) for r in res.ranges} == first
    t_dump = target(k)
    res2 = engine.run_check(t_dump, [engine.uv_source])
    assert engine.confirm(res2) is res2 and res2.unconfirmed == 0   # dumps do not change


def test_exposition_is_valid_classic_and_openmetrics():
    m = _monitor(uv_kernel("UV3", 2, healthy=False))
    m.run_once()
    for per_range in cliopts.PER_RANGE:
        reg = metrics.registry(lambda: m.state, per_range)
        text = generate_latest(reg)
        p = subprocess.run([str(promtool()), "check", "metrics"], input=text,
                           capture_output=True)
        assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
        fams = {f.name for f in om_parse(om_latest(reg).decode())}
        assert "mmrwatch_collector_success" in fams and "process_resident_memory_bytes" in fams


def test_describe_gives_names_without_walking():
    calls = []
    col = metrics.MmrwatchCollector(lambda: calls.append(1) or (None, None))
    names = {m.name for m in col.describe()}
    assert {"mmrwatch_collector_success", "mmrwatch_range_unmapped_bytes",
            "mmrwatch_unmapped_bytes"} <= names and not calls


def test_textfile_is_atomic_world_readable_and_timestamp_free(tmp_path):
    m = _monitor(uv_kernel("UV4", 1, healthy=False))
    m.run_once()
    path = tmp_path / "mmrwatch.prom"
    old = os.umask(0o077)
    try:
        textfile.write(path, metrics.registry(lambda: m.state, process=False))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["mmrwatch.prom"]
    text = path.read_text()
    assert "process_" not in text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            assert s.timestamp is None
    p = subprocess.run([str(promtool()), "check", "metrics"], input=text.encode(),
                       capture_output=True)
    assert p.returncode == 0, p.stdout.decode()
    with pytest.raises(textfile.TextfileError, match="only reads files ending in .prom"):
        textfile.check_target(tmp_path / "x.txt")
    with pytest.raises(textfile.TextfileError, match="no such directory"):
        textfile.check_target(tmp_path / "nope" / "x.prom")


def test_sd_notify_datagrams_and_watchdog_env(tmp_path, monkeypatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    assert systemd.sd_notify("READY=1\nSTATUS=x")
    assert sock.recv(4096) == b"READY=1\nSTATUS=x"
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.sd_notify("READY=1")


def test_loop_pings_watchdog_while_idle_and_stops_promptly():
    pings, cycles = [], []
    m = _monitor(uv_kernel("UV4", 1), interval=3600, ping=lambda: pings.append(time.monotonic()),
                 ping_every=0.05, on_cycle=lambda mon: cycles.append(mon.state[0].runs))
    t = threading.Thread(target=m.loop)
    t.start()
    time.sleep(0.5)
    m.reload()                                    # SIGHUP: check now
    time.sleep(0.3)
    m.stop()
    t.join(5)
    assert not t.is_alive()
    assert cycles == [1, 2] and len(pings) >= 5


def test_journald_prefix(monkeypatch, tmp_path):
    f = open(tmp_path / "err", "w")
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert systemd.under_journald(f)
    import logging
    rec = logging.LogRecord("mmrwatch", logging.WARNING, "", 0, "LOCAL_MMR missing", (), None)
    assert systemd._Formatter("logfmt", True).format(rec) == \
        '<4>level=warning msg="LOCAL_MMR missing"'
    assert systemd._Formatter("logfmt", False).format(rec).startswith("ts=")
    f.close()
    Path(tmp_path / "err").unlink()


def test_reload_rereads_the_ranges_configuration():
    k = uv_kernel("UV4", 1)
    t = target(k, live=True)
    calls = []

    def sources():
        calls.append(1)
        return [engine.uv_source] if len(calls) == 1 else []
    m = Monitor(lambda: t, sources, 300, 30)
    m.run_once()
    m.run_once()
    assert len(calls) == 1 and len(m.state[1].ranges) == 3     # read once, kept
    m.reload()                                                 # SIGHUP
    m.run_once()
    assert len(calls) == 2 and len(m.state[1].ranges) == 0     # the new configuration
