"""Prometheus metrics from the monitor's last published state.

``collect()`` only reads the immutable ``(Health, Snapshot)`` pair, so a scrape costs
microseconds and never triggers or waits for a walk.  Conventions (prometheus/docs naming,
node_exporter's ``collector_success``): base units, ``_total`` counters, ``_timestamp_seconds``
for times, no client-side timestamps, and never a kernel virtual address anywhere (KASLR):
ranges are named by their physical identity only.  Per-range series exist only after the
first successful check; host-level aggregates are always complete.
"""
from __future__ import annotations

import platform
from typing import Callable, Iterator, Optional

import drgn
from prometheus_client import (GCCollector, CollectorRegistry, PlatformCollector,
                               ProcessCollector)
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    InfoMetricFamily, Metric)

import mmrwatch
from mmrwatch.collectors.vocab import TABLE

from .exits import LABELS
from .monitor import Health
from .snapshot import RangeState, Snapshot

NS = "mmrwatch"
COLLECTOR = "pgtable"
ERROR_KINDS = LABELS          # collector_error{kind}: one series per label, always present
CACHED = " (cached from the last successful check)"
State = Callable[[], tuple[Health, Optional[Snapshot]]]


def _g(name: str, doc: str, labels=(), unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NS}_{name}", doc, labels=list(labels), unit=unit)


class MmrwatchCollector:
    """A prometheus-client collector over ``state()``; see the module docstring."""

    def __init__(self, state: State, per_range: str = "mismatch") -> None:
        self.state, self.per_range = state, per_range

    def describe(self) -> list[Metric]:
        """Names only, so ``?name[]=`` filtering works without running ``collect``."""
        return [m for m in self._families(Health(), None, describe=True)]

    def collect(self) -> Iterator[Metric]:
        health, snap = self.state()
        yield from self._families(health, snap)

    def _families(self, h: Health, snap: Optional[Snapshot], describe: bool = False
                  ) -> Iterator[Metric]:
        yield InfoMetricFamily(f"{NS}_build", "mmrwatch build information.", value={
            "version": mmrwatch.__version__, "pythonversion": platform.python_version(),
            "drgn_version": drgn.__version__})
        yield from self._health(h)
        if snap is None and not describe:
            return
        yield from self._aggregates(snap)
        if self.per_range != "none":
            yield from self._per_range(snap)

    def _health(self, h: Health) -> Iterator[Metric]:
        lab = ["collector"]
        m = _g("collector_success", "1 if the last background check succeeded, else 0.", lab)
        m.add_metric([COLLECTOR], int(h.success))
        yield m
        m = _g("collector_error", "1 for the reason the last check failed (kind label).",
               lab + ["kind"])
        for kind in ERROR_KINDS:
            m.add_metric([COLLECTOR, kind], int(h.error_kind == kind))
        yield m
        m = _g("collector_duration_seconds", "Duration of the last check attempt.", lab)
        m.add_metric([COLLECTOR], h.duration)
        yield m
        if h.last_success is not None:
            m = _g("collector_last_success_timestamp_seconds",
                   "Unix time the last successful check started.", lab)
            m.add_metric([COLLECTOR], h.last_success)
            yield m
        for name, doc, val in (
                ("collector_runs", "Checks attempted.", h.runs),
                ("collector_failures", "Checks that failed.", h.failures),
                ("unconfirmed_mismatches", "Live mismatches a second walk did not see "
                 "(page tables changing under the reader); not reported.", h.unconfirmed_total),
                ("walk_cpu_seconds", "CPU seconds spent in checks (check thread only).",
                 h.walk_cpu_total)):
            c = CounterMetricFamily(f"{NS}_{name}", doc, labels=lab)
            c.add_metric([COLLECTOR], val)
            yield c
        m = _g("last_walk_cpu_seconds", "CPU seconds of the last check (check thread only).", lab)
        m.add_metric([COLLECTOR], h.walk_cpu)
        yield m
        m = _g("peak_rss_bytes", "Peak resident memory of the mmrwatch process.")
        m.add_metric([], h.peak_rss)
        yield m

    def _aggregates(self, s: Optional[Snapshot]) -> Iterator[Metric]:
        mms = s.mm_names if s else []
        m = _g("ranges", "Ranges checked, by source" + CACHED + ".", ["source"])
        for src in sorted({r.source for r in s.ranges} if s else ()):
            m.add_metric([src], sum(r.source == src for r in s.ranges))
        yield m
        for name, doc, fn in (
                ("mismatched_ranges", "Ranges unmapped or mis-cached in mm" + CACHED + ".",
                 lambda mm: s.mismatched(mm)),
                ("unmapped_bytes", "Bytes of required ranges not mapped in mm" + CACHED + ".",
                 lambda mm: s.total("unmapped", mm)),
                ("wrong_cache_bytes", "Bytes of required ranges mapped with a forbidden "
                 "cache mode in mm" + CACHED + ".", lambda mm: s.total("wrong_cache", mm)),
                ("stale_bytes", "Bytes missing from efi_mm only because its kernel half was not "
                 "re-copied since the mapping was made (no EFI call since)" + CACHED + ".",
                 lambda mm: s.total("stale", mm))):
            m = _g(name, doc, ["mm"])
            for mm in mms:
                m.add_metric([mm], fn(mm))
            yield m
        m = _g("address_space_table", "1 if mm has a page table to check, 0 if it has none"
               + CACHED + ".", ["mm"])
        for mm in mms:
            m.add_metric([mm], int(s.mms[mm] == TABLE))
        yield m
        m = _g("findings", "Findings of the last check by severity" + CACHED + ".", ["severity"])
        for sev, n in (sorted(s.findings.items()) if s else ()):
            m.add_metric([sev], n)
        yield m
        kernel = {"release": s.kernel_release, "paging_levels": str(s.paging_levels),
                  "types": s.types, "symbols": s.symbols} if s else {}
        yield InfoMetricFamily(f"{NS}_kernel", "The checked kernel and where its types (btf|dwarf) "
                              "and symbols came from" + CACHED + ".", value=kernel)
        uv = {k: str(v) for k, v in (s.uv if s else {}).items()
              if k in ("state", "hub", "revision")}
        yield InfoMetricFamily(f"{NS}_uv", "UV system kind" + CACHED + ".", value=uv or None)
        m = _g("uv_blades", "UV blades (hubs) found" + CACHED + ".")
        if s:
            m.add_metric([], int(s.uv.get("blades", 0) or 0))
        yield m

    def _per_range(self, s: Optional[Snapshot]) -> Iterator[Metric]:
        rows: list[RangeState] = list(s.ranges) if s else []
        if self.per_range == "mismatch":
            rows = [r for r in rows if r.mismatched_mms or any(r.stale.values())]
        key = ["range", "blade", "pnode"]
        size = _g("range_size_bytes", "Size of the physical range" + CACHED + ".", key)
        info = InfoMetricFamily(f"{NS}_range", "Physical bounds and origin of each range"
                                + CACHED + ".", labels=key + ["source", "kind", "start", "end"])
        per_mm = {n: _g(f"range_{n}_bytes", doc + CACHED + ".", key + ["mm"]) for n, doc in (
            ("unmapped", "Bytes of the range not mapped at a required VA of mm"),
            ("wrong_cache", "Bytes of the range mapped with a forbidden cache mode in mm"),
            ("stale", "Bytes of the range absent from efi_mm's not-yet-resynced kernel half"))}
        for r in rows:
            size.add_metric([r.name, r.blade, r.pnode], r.size)
            info.add_metric([r.name, r.blade, r.pnode, r.source, r.kind, f"0x{r.phys:x}",
                             f"0x{r.phys + r.size:x}"], {})
            for n, fam in per_mm.items():
                for mm, val in sorted(getattr(r, n).items()):
                    fam.add_metric([r.name, r.blade, r.pnode, mm], val)
        yield size
        yield info
        yield from per_mm.values()


class HTTPEventsCollector:
    """``mmrwatch_http_client_errors_total{kind}``: bad clients the endpoint turned away
    (each kind is logged once, then only counted here)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(f"{NS}_http_client_errors", "HTTP clients turned away, by "
                                "kind (malformed, too_large, slow, stalled, conn_limit, "
                                "overload, unauthorized, tls).", labels=["kind"])
        for kind, n in sorted(self.counts.items()):
            c.add_metric([kind], n)
        yield c


def registry(state: State, per_range: str = "mismatch", process: bool = True,
             http_events: Optional[dict[str, int]] = None) -> CollectorRegistry:
    """A private registry: our collector, plus the exporter's own metrics when we serve
    HTTP ourselves (``process``: ``process_*``, ``python_*``, and ``http_events`` counts),
    as node_exporter adds ``process_*``/``go_*`` unless ``--web.disable-exporter-metrics``.

    The textfile mode leaves them out: node_exporter exports its own under the same names
    and would reject the duplicates.
    """
    reg = CollectorRegistry()
    reg.register(MmrwatchCollector(state, per_range))
    if process:
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        if http_events is not None:
            reg.register(HTTPEventsCollector(http_events))
    return reg
