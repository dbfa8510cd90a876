"""``--textfile``: metrics for node_exporter's textfile collector, replaced atomically.

node_exporter may read the file at any moment, so it is written to a temporary file in the
same directory, made world-readable (under ``UMask=0077`` a plain write would be 0600 and
unreadable to node_exporter), flushed to disk, and renamed over the old one.  No
timestamps: the textfile collector rejects them; staleness is judged from the file's mtime.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest


class TextfileError(Exception):
    """The textfile cannot be written (one-line reason)."""


def check_target(path: Path) -> None:
    """Fail at startup, not at the first check, when the file cannot be placed."""
    if path.suffix != ".prom":
        raise TextfileError(f"{path}: node_exporter only reads files ending in .prom")
    d = path.parent
    if not d.is_dir():
        raise TextfileError(f"{d}: no such directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise TextfileError(f"{d}: not writable")


def write(path: Path, registry: CollectorRegistry) -> None:
    """Atomically replace ``path`` with the registry's classic text exposition (mode 0644)."""
    data = generate_latest(registry)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
