"""``mmrwatch serve`` as a process on the host: real dumps, bad inputs, load.

Bad inputs must never stop the daemon: it stays up, exports success 0 with the reason, and
exits (0) only on SIGTERM.  The load test runs 100 concurrent scrapers plus idle TLS
connections while checks run every second: every scrape must be answered.
"""
import ssl
import socket
import threading
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from tests.bed.serve import Serve
from tests.bed.tls import self_signed_web_config

pytestmark = [pytest.mark.realkernel]


def _v(m, name, **labels):
    return m.get((name, tuple(sorted(labels.items()))))


@pytest.mark.parametrize("case,kind", [("no-kcore", "noinput"), ("no-dump", "noinput"),
                                       ("not-a-dump", "data"),
                                       pytest.param("wrong-vmlinux", "debuginfo",
                                                    marks=pytest.mark.uvkernel),
                                       ("no-vmlinux", "debuginfo"), ("corrupt-btf", "debuginfo"),
                                       ("other-kernel-btf", "debuginfo")])
def test_bad_inputs_keep_the_daemon_up(bed, tmp_path, case, kind):
    b = bed.boot("debian-l5")
    if case == "wrong-vmlinux":       # another kernel's debug info: the UV build's
        args = ["--vmcore", str(b.elf), "--vmlinux", str(bed.kernel("uv").vmlinux)]
    elif case == "corrupt-btf":       # a BTF header whose sections run past the file
        bad = tmp_path / "bad.btf"
        bad.write_bytes(bytes.fromhex("9feb0100180000000000000000001000") + bytes(16))
        args = ["--vmcore", str(b.elf), "--btf", str(bad)]
    elif case == "other-kernel-btf":  # Debian 11's 5.10 BTF (its vmlinux's .BTF) on a 6.1 dump
        args = ["--vmcore", str(b.elf), "--btf", str(bed.kernel("debian-bullseye").vmlinux)]
    else:
        args = {"no-kcore": ["--live", "--vmlinux", str(b.kernel.vmlinux)],   # host has none
                "no-dump": ["--vmcore", str(tmp_path / "missing")],
                "not-a-dump": ["--vmcore", str(b.kernel.vmlinux)],
                # DWARF asked for, none in the standard places
                "no-vmlinux": ["--vmcore", str(b.elf), "--debug-info", "dwarf"]}[case]
    import os
    if case == "no-kcore" and os.path.exists("/proc/kcore"):
        pytest.skip("this host has /proc/kcore")
    if case == "no-vmlinux" and os.path.exists(f"/usr/lib/debug/boot/vmlinux-{b.kernel.release}"):
        pytest.skip("this host has the guest kernel's debug info installed")
    s = Serve(*args, "--interval", "0.5")
    m = s.wait_runs(3)
    assert _v(m, "mmrwatch_collector_success", collector="pgtable") == 0
    assert _v(m, "mmrwatch_collector_error", collector="pgtable", kind=kind) == 1
    assert not any(k[0] == "mmrwatch_ranges" for k in m)        # no made-up data
    assert s.proc.poll() is None
    rc, err = s.stop()
    assert rc == 0 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "level=error" in ln]
    assert len(errors) == 1, err                                  # logged once, not per run


@pytest.mark.parametrize("boot,checks", [
    ("debian-l5", {"uv": "not-uv-kernel", "efi_table": 1}),
    ("debian-noruntime", {"uv": "not-uv-kernel", "efi_table": 0}),
])
def test_non_uv_kernel_and_missing_efi_mm_are_states_not_failures(bed, boot, checks):
    b = bed.boot(boot)
    s = Serve("--vmcore", str(b.elf), "--vmlinux", str(b.kernel.vmlinux), "--per-range", "all")
    try:
        m = s.wait_runs(1)
    finally:
        rc, err = s.stop()
    assert rc == 0, err
    assert _v(m, "mmrwatch_collector_success", collector="pgtable") == 1
    assert _v(m, "mmrwatch_uv_info", state=checks["uv"]) == 1
    assert _v(m, "mmrwatch_address_space_table", mm="efi_mm") == checks["efi_table"]
    assert _v(m, "mmrwatch_unmapped_bytes", mm="init_mm") == 0


def test_openmetrics_negotiation(bed):
    b = bed.boot("debian-l5")
    s = Serve("--vmcore", str(b.elf), "--vmlinux", str(b.kernel.vmlinux))
    try:
        s.wait_runs(1)
        om = s.get(headers={"Accept": "application/openmetrics-text;version=1.0.0,"
                            "text/plain;version=0.0.4;q=0.5"})
        assert om.rstrip().endswith("# EOF")
        names = {f.name for f in om_parse(om)}
        assert {"mmrwatch_collector_success", "mmrwatch_build", "process_cpu_seconds"} <= names
        landing = s.get("/")
        assert 'href="/metrics"' in landing
    finally:
        assert s.stop()[0] == 0


def test_load_100_scrapers_and_idle_tls_clients(bed, tmp_path):
    b = bed.boot("debian-l5")
    self_signed_web_config(tmp_path)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
    s = Serve("--vmcore", str(b.elf), "--vmlinux", str(b.kernel.vmlinux), "--interval", "0.2",
              "--web.config.file", str(tmp_path / "web.yml"), scheme="https", ctx=ctx)
    try:
        first = s.wait_runs(1)
        idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(20)]
        results: list = []
        stop_at = time.monotonic() + 8

        def scraper():
            while time.monotonic() < stop_at:
                try:
                    body = s.get(timeout=10)
                    results.append("mmrwatch_collector_success" in body)
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    results.append(repr(e))
        threads = [threading.Thread(target=scraper) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        last = s.metrics()
        for c in idle:
            c.close()
    finally:
        rc, err = s.stop()
    failures = [r for r in results if r is not True]
    assert len(results) >= 100 and not failures, failures[:5]
    runs = lambda m: _v(m, "mmrwatch_collector_runs_total", collector="pgtable")  # noqa: E731
    assert runs(last) > runs(first)          # checks kept running under the load
    assert rc == 0, err
