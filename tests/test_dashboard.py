"""The Grafana dashboard against a real Prometheus scraping real exporters.

Two ``mmrwatch serve`` processes on the host (the bed's ``Serve``): one on a real dump of the
stock Debian kernel (``--per-range all``, so every per-range series exists, and a configured
direct-map range, the kind efi_mm shares from init_mm, so the stale series do), one failing on
a file that is not a dump (so the failure panels have a host to show).  A real Prometheus on
127.0.0.1 scrapes both; every panel query and every variable query must be valid PromQL
(the API rejects anything else) and return series.
"""
from pathlib import Path

import pytest

from tests.bed.prom import Prometheus, dashboard_queries
from tests.bed.serve import Serve

pytestmark = [pytest.mark.realkernel]
REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "mmrwatch.json"


def test_every_dashboard_query_returns_series_from_real_exporters(bed, tmp_path):
    b = bed.boot("debian-l5")
    ranges = tmp_path / "ranges.toml"
    ranges.write_text('[[range]]\nname = "low-ram"\nstart = 0x1000000\nsize = "64KiB"\n'
                      'va = "direct"\ncache = "any"\n')
    good = Serve("--vmcore", str(b.elf), "--per-range", "all", "--interval", "1",
                 "--ranges", str(ranges))
    bad = Serve("--vmcore", str(b.kernel.vmlinux), "--interval", "1")   # kind="data"
    results, empty = {}, []
    try:
        good.wait_runs(1)
        with Prometheus(tmp_path / "prom", [f"127.0.0.1:{good.port}", f"127.0.0.1:{bad.port}"],
                        []) as prom:
            prom.wait("both exporters scraped, one check good and one failing", lambda: len(
                prom.query('mmrwatch_collector_success == 1 or mmrwatch_collector_error'
                           '{kind="data"} == 1')) == 2, timeout=120)
            prom.wait("a CPU rate over two checks", lambda: prom.query(
                "rate(mmrwatch_walk_cpu_seconds_total[1m]) > 0"), timeout=120)
            for name, expr in dashboard_queries(DASHBOARD):
                results[name] = prom.query(expr)        # HTTP 400 on invalid PromQL
                if not results[name]:
                    empty.append(f"{name}: {expr}")
    finally:
        assert good.stop()[0] == 0
        assert bad.stop()[0] == 0
    assert not empty, "dashboard queries without series:\n" + "\n".join(empty)
    assert len(results) >= 20

    def value(name):
        return float(results[name][0]["value"][1])
    assert value("Hosts with unmapped firmware ranges/A") == 0      # a healthy kernel
    assert value("Checks failing/A") == 1                            # the non-dump
    reasons = results["Check failure reasons/A"]
    assert [r["metric"]["kind"] for r in reasons] == ["data"]
    assert {r["metric"]["instance"] for r in results["$instance"]} == {
        f"127.0.0.1:{good.port}", f"127.0.0.1:{bad.port}"}
    assert {r["metric"]["job"] for r in results["$job"]} == {"mmrwatch"}
    mms = {r["metric"]["mm"] for r in results["Stale bytes per mm/A"]}
    assert mms == {"init_mm", "efi_mm"}
    wrong = results["Ranges with a problem: bytes by range and mm/B"]
    assert wrong and all(r["metric"]["range"] for r in wrong)
    stale = results["Ranges with a problem: bytes by range and mm/C"]
    assert [(r["metric"]["range"], r["metric"]["mm"], r["value"][1]) for r in stale] == [
        ("low-ram", "efi_mm", "0")]
