"""``mmrwatch serve``: the fleet daemon (HTTP exporter and/or node_exporter textfile).

Startup binds the listeners (or takes systemd's) and validates every file first, so a typo
fails the unit at once with one line.  Everything that depends on the kernel (no
/proc/kcore, permission, missing or mismatched debug info, no efi_mm) does *not* stop the
daemon: it stays up, exports ``mmrwatch_collector_success 0`` with the reason, retries each
interval, and exits only on SIGTERM.  SIGHUP re-reads the ranges file and the web config and
checks at once.

SIGTERM stops the daemon within seconds whatever the check is doing: the walk is cancelled
at its next table read; a check inside one long kernel read is not waited for beyond
``STOP_WAIT``; and should even the main thread not get to run (a C call holding the GIL),
``SIGALRM``'s default action ends the process at ``STOP_HARD``.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Optional

from mmrwatch.collectors.errors import MmrwatchError
from mmrwatch.collectors.vocab import CONFIG, OSERR, USAGE

from . import metrics, systemd, textfile, web, webconfig
from .cliopts import DEFAULT_LISTEN
from .httpd import EventLog, HTTPServer
from .monitor import Monitor

log = logging.getLogger("mmrwatch")
STOP_WAIT = 2.5      # seconds a stopping daemon waits for a check that is not cancellable
STOP_HARD = 4        # seconds after SIGTERM at which SIGALRM ends the process regardless


class ServeError(MmrwatchError):
    """Startup cannot proceed: a usage, config or oserr *kind* (``exits`` has its code)."""


class Daemon:
    """Wires the monitor to its outputs (HTTP, textfile, systemd) and to signals."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stop = threading.Event()
        self.stopping_at: list[float] = []
        # before anything serves: a SIGTERM from here on is a clean, prompt stop
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        self.web_cfg = self._web_config()
        self.server: Optional[HTTPServer] = None
        self.events = EventLog()
        self.ready = False
        self._tf_error: Optional[str] = None
        self.monitor = Monitor(self._open, self._sources, args.interval, args.timeout,
                               on_cycle=self._cycle, ping=self._ping,
                               ping_every=systemd.watchdog_interval() or 0.0)
        http = bool(args.listen) or args.systemd_socket or args.textfile is None
        self.registry = metrics.registry(lambda: self.monitor.state, args.per_range,
                                         process=http and not args.disable_exporter_metrics,
                                         http_events=self.events.counts)
        self.tf_registry = (metrics.registry(lambda: self.monitor.state, args.per_range,
                                             process=False) if args.textfile else None)
        if args.textfile is not None:
            try:
                textfile.check_target(args.textfile)
            except textfile.TextfileError as e:
                raise ServeError(OSERR, str(e)) from None
        if http:
            self._listen()

    # -- startup ----------------------------------------------------------------------------
    def _web_config(self) -> webconfig.WebConfig:
        try:
            return webconfig.load(self.args.web_config)
        except webconfig.WebConfigError as e:
            raise ServeError(CONFIG, str(e)) from None

    def _listen(self) -> None:
        if self.args.systemd_socket:
            if self.args.listen:
                log.warning("--web.listen-address ignored: --web.systemd-socket serves on "
                            "the sockets systemd passes")
            try:
                socks = systemd.listen_fds()
            except systemd.SocketActivationError as e:
                raise ServeError(OSERR, str(e)) from None
            how = " (systemd socket)"
        else:
            socks, how = [], ""
            for addr in self.args.listen or [DEFAULT_LISTEN]:
                try:
                    socks.append(web.bind(addr))
                except (web.AddressError, OSError) as e:
                    for s in socks:
                        s.close()
                    if isinstance(e, web.AddressError):
                        raise ServeError(USAGE, str(e)) from None
                    raise ServeError(OSERR, f"cannot listen on {addr}: "
                                     f"{e.strerror or e}") from None
        self.server = web.serve(socks, self.registry, self.args.telemetry_path,
                                lambda: self.web_cfg, self.events)
        for s in socks:      # the address bound: with port 0, the port the kernel chose
            log.info("listening on %s%s%s (%s)", web.display(s.getsockname()),
                     self.args.telemetry_path, how,
                     "TLS" if self.web_cfg.ssl_context else "plain HTTP")

    def _open(self):
        from . import targetopts
        return targetopts.open_target(self.args)

    def _sources(self):
        from mmrwatch.collectors import engine
        return engine.default_sources(self.args.ranges)

    # -- per check --------------------------------------------------------------------------
    def _cycle(self, mon: Monitor) -> None:
        health, snap = mon.state
        if self.args.textfile is not None:
            self._write_textfile()
        if health.success and snap is not None:
            status = snap.status_line()
        else:
            status = f"check failing ({health.error_kind}): {health.error}"
        msg = f"STATUS={status[:200]}"
        if not self.ready:
            self.ready = True
            msg = "READY=1\n" + msg
        systemd.sd_notify(msg)

    def _write_textfile(self) -> None:
        try:
            textfile.write(self.args.textfile, self.tf_registry)
            err = None
        except OSError as e:
            err = f"cannot write {self.args.textfile}: {e.strerror}"
        if err != self._tf_error:
            self._tf_error = err
            if err:
                log.error("%s", err)
            else:
                log.info("textfile %s written", self.args.textfile)

    def _ping(self) -> None:
        if self.monitor.ping_every:
            systemd.sd_notify("WATCHDOG=1")

    # -- signals and the main loop ------------------------------------------------------------
    def _reload(self) -> None:
        try:
            self.web_cfg = webconfig.load(self.args.web_config)
        except webconfig.WebConfigError as e:
            log.error("reload: keeping the old web config: %s", e)
        log.info("reload: re-reading configuration and checking now")
        self.monitor.reload()

    def _on_stop(self, signum, _frame) -> None:
        if self.stopping_at:
            return
        self.stopping_at.append(time.monotonic())
        signal.alarm(STOP_HARD)              # last resort; SIGALRM's default action ends us
        if hasattr(self, "monitor"):
            self.monitor.stop()              # a walk ends at its next table read
        self.stop.set()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then exit the process (status 0) within seconds."""
        stop, stopping_at = self.stop, self.stopping_at
        signal.signal(signal.SIGHUP, lambda *_: self._reload())
        systemd.sd_notify("STATUS=opening the kernel and loading debug info")
        worker = threading.Thread(target=self.monitor.loop, name="mmrwatch-check", daemon=True)
        worker.start()
        while not stop.wait(1.0):
            pass
        self.monitor.stop()                  # (again, for a SIGTERM during startup)
        busy, phase = self.monitor.busy_since, self.monitor.phase
        log.info("stopping%s", f": cancelling the check in progress ({phase} for "
                 f"{stopping_at[0] - busy:.1f} s)" if busy is not None else "")
        systemd.sd_notify("STOPPING=1")
        if self.server is not None:
            self.server.stop(timeout=0.2)
        worker.join(max(0.0, STOP_WAIT - (time.monotonic() - stopping_at[0])))
        took = time.monotonic() - stopping_at[0]
        if worker.is_alive():     # inside one long drgn call: do not wait for it
            log.warning("stopped after %.2f s without waiting for the check (%s: inside one "
                        "call that cannot be cancelled)", took, phase)
        else:
            log.info("stopped after %.2f s", took)
        # Nothing is left to save (the textfile is written atomically per check); the
        # interpreter's teardown (modules, drgn's state) is work a starved daemon (Nice=10,
        # CPUWeight=20 beside busy services) should not have to do before it may exit.
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)


def run(args: argparse.Namespace) -> int:
    """Validate the flags and files, then serve; a ``MmrwatchError`` when startup cannot
    proceed (a ``RangesError`` as is: ``exits.outcome`` makes it a config error here)."""
    systemd.setup_logging(args.log_level, args.log_format)
    if args.interval <= 0 or args.timeout <= 0:
        raise ServeError(USAGE, "--interval and --timeout must be positive")
    if args.ranges is not None:
        from mmrwatch.collectors import userranges
        userranges.load(args.ranges)
    return Daemon(args).run()
