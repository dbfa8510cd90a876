"""``mmrwatch serve`` as a subprocess on the host, for the tests that scrape a real daemon
(the host tests, the dashboard test)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .boots import free_port


class Serve:
    """One ``mmrwatch serve`` subprocess on a loopback port."""

    def __init__(self, *args: str, scheme: str = "http", ctx=None) -> None:
        self.port = free_port()
        self.scheme, self.ctx = scheme, ctx
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mmrwatch", "serve", "--web.listen-address",
             f"127.0.0.1:{self.port}", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def get(self, path="/metrics", headers=None, timeout=10) -> str:
        req = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.port}{path}",
                                     headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout, context=self.ctx) as r:
            return r.read().decode()

    def metrics(self) -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(self.get()) for s in f.samples}

    def wait_runs(self, n: int, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                m = self.metrics()
                if m.get(("mmrwatch_collector_runs_total", (("collector", "pgtable"),)), 0) >= n:
                    return m
            except OSError:
                pass
            assert time.monotonic() < deadline, "no check finished in time"
            time.sleep(0.2)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err
