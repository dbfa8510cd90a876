"""A real Prometheus server and promtool (Debian 12's package), on 127.0.0.1 only.

The package is fetched with ``apt-get download`` and unpacked into the cache, never
installed: installing it would start a system-wide server listening on every interface.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from .boots import free_port
from .cache import log, provide, run
from .kernels import _apt_version


def _build(out: Path) -> None:
    run(["apt-get", "download", "-q", "prometheus"], cwd=out, capture_output=True)
    deb = next(out.glob("prometheus_*.deb"))
    run(["dpkg-deb", "-x", str(deb), str(out / "root")])
    for tool in ("prometheus", "promtool"):
        shutil.copy2(out / "root/usr/bin" / tool, out / tool)
    shutil.rmtree(out / "root")
    deb.unlink()


def prometheus_dir() -> Path:
    """Directory holding ``prometheus`` and ``promtool``, keyed by the package version."""
    ver = _apt_version("prometheus").replace(":", "_").replace("+", "_")
    return provide(f"prometheus/{ver}", _build)


def promtool() -> Path:
    return prometheus_dir() / "promtool"


class Prometheus:
    """A throwaway server: loopback listener, private storage, fast scrape/eval intervals."""

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path],
                 interval: str = "1s", scheme: str = "http", job_extra: str = "",
                 scrape_configs: Optional[list[dict]] = None) -> None:
        """One job ``mmrwatch`` scraping ``targets``, or ``scrape_configs`` as given (each
        job's ``scrape_interval`` is replaced by ``interval``)."""
        self.dir = workdir
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        rules = "\n".join(f"  - {p}" for p in rule_files)
        if scrape_configs is None:
            jobs = (f"  - job_name: mmrwatch\n    scheme: {scheme}\n{job_extra}"
                    f"    static_configs:\n      - targets: {json.dumps(targets)}\n")
        else:
            jobs = "".join(f"  - {json.dumps(dict(j, scrape_interval=interval))}\n"
                           for j in scrape_configs)
        (workdir / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
            f"rule_files:\n{rules}\n"
            f"scrape_configs:\n{jobs}")
        self.proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "Prometheus":
        d = prometheus_dir()
        self.log = open(self.dir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [str(d / "prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("prometheus did not start:\n" +
                                       (self.dir / "prometheus.log").read_text()[-3000:])
                time.sleep(0.3)
        log(f"prometheus on 127.0.0.1:{self.port}")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def wait(self, what: str, cond, timeout: float = 120, every: float = 1.0):
        """Poll ``cond()`` until it returns something truthy; fail with ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            got = cond()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; "
                                     f"alerts: {self.alerts()}")
            time.sleep(every)


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel title/refId or ``$variable``, PromQL) for every query of a Grafana dashboard,
    with its template variables replaced the way Grafana does for "All" (``allValue``) and
    ``$__rate_interval`` by 1m; a variable the dashboard does not define is an error."""
    dash = json.loads(path.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    out = []
    for p in dash["panels"]:
        for t in p["targets"]:
            out.append((f"{p['title']}/{t['refId']}", t["expr"]))
    for v in variables.values():
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["definition"])
            assert m and v["query"]["query"] == v["definition"], v
            out.append((f"${v['name']}", m.group(1)))

    def subst(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name == "__rate_interval":
            return "1m"
        assert name in variables and variables[name]["type"] == "query", f"undefined ${name}"
        return variables[name]["allValue"]
    return [(name, re.sub(r"\$\{(\w+)\}|\$(\w+)", subst, expr)) for name, expr in out]
