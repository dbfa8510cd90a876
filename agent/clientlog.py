"""Bad HTTP clients: what one may hold, and how each kind is logged once, then counted.

The limits bound what a client can cost the server (``httpd``).  A flood of bad clients
must write one log line, not one per connection: ``EventLog`` logs the first event of a
kind, then at most one line per ``REPEAT_LOG`` seconds with the count since; the counts are
exported as ``mmrwatch_http_client_errors_total{kind}``.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("mmrwatch")
MAX_CONNS = 512            # open client connections (each costs one fd and its buffers)
MAX_HEAD = 16 << 10        # bytes of request line + headers
MAX_HEADERS = 100
CLIENT_TIMEOUT = 10.0      # seconds for handshake + request head, and again for the answer
WORKERS = 4                # threads rendering answers
QUEUE = 256                # complete requests waiting for a worker
REPEAT_LOG = 300.0         # seconds between two log lines of one kind of client event
EVENTS = {   # kind -> what the one log line says
    "malformed": "malformed HTTP request (answered 400)",
    "too_large": f"request head over {MAX_HEAD} bytes (answered 431)",
    "slow": f"client sent no complete request within {CLIENT_TIMEOUT:g} s (closed)",
    "stalled": f"client did not read its answer within {CLIENT_TIMEOUT:g} s (closed)",
    "conn_limit": f"{MAX_CONNS} connections open: closed the one idle longest",
    "overload": f"{QUEUE} requests already waiting (answered 503)",
    "unauthorized": "wrong or missing basic-auth credentials (answered 401)",
    "tls": "TLS handshake failed",
}


class EventLog:
    """Counts client events by kind; logs the first of a kind, then at most one line per
    ``REPEAT_LOG`` seconds with the count since (``counts`` feeds a metric)."""

    def __init__(self, interval: float = REPEAT_LOG) -> None:
        self.interval = interval
        self.counts: dict[str, int] = dict.fromkeys(EVENTS, 0)
        self._last: dict[str, tuple[float, int]] = {}      # kind -> (logged at, count then)
        self._lock = threading.Lock()

    def note(self, kind: str, client: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            self.counts[kind] += 1
            last = self._last.get(kind)
            if last is not None and now - last[0] < self.interval:
                return
            self._last[kind] = (now, self.counts[kind])
        if last is None:
            log.warning("http: %s, from %s; further ones are counted "
                        "(mmrwatch_http_client_errors_total) and logged at most every %g s",
                        EVENTS[kind], client or "?", self.interval)
        else:
            log.warning("http: %s: %d times in the last %.0f s", EVENTS[kind],
                        self.counts[kind] - last[1], now - last[0])
