"""Start a command the way systemd starts our ``Type=notify`` unit, inside a bed guest.

The bed's guests boot a busybox init, not systemd, so this reads the real unit file (plus
drop-ins) and does what systemd would for it: ``Environment=``/``EnvironmentFile=``, the
``$VAR`` word splitting of ``ExecStart=``, a notify socket (``NOTIFY_SOCKET``), the watchdog
(``WATCHDOG_USEC``), stderr on a stream named by ``JOURNAL_STREAM``.  Only the executable's
install path is substituted (``--exe``: the unit says /opt/mmrwatch/bin/mmrwatch, the guest
runs the repo's venv).  Everything it sees is written under ``STATE``: ``pid``, ``journal``,
``notify.log`` (one ``<seconds> <message>`` line per datagram), ``exit``.

    python -m tests.bed.svc UNIT STATE --exe PATH [--dropin FILE ...]
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def parse_unit(paths: list[Path]) -> dict[str, list[str]]:
    """``[Service]`` settings in order; an empty assignment resets a list (systemd rule)."""
    out: dict[str, list[str]] = {}
    for path in paths:
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section != "[Service]" or "=" not in line:
                continue
            key, val = (s.strip() for s in line.split("=", 1))
            if val == "":
                out[key] = []
            else:
                out.setdefault(key, []).append(val)
    return out


def environment(unit: dict[str, list[str]]) -> dict[str, str]:
    env: dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for item in unit.get("Environment", []):
        for word in shlex.split(item):
            k, _, v = word.partition("=")
            env[k] = v
    for item in unit.get("EnvironmentFile", []):
        p = Path(item.lstrip("-"))
        if not p.exists():
            if item.startswith("-"):
                continue
            raise SystemExit(f"EnvironmentFile {p} missing")
        for line in p.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = " ".join(shlex.split(v)) if v.strip() else ""
    return env


def exec_argv(cmdline: str, env: dict[str, str]) -> list[str]:
    """systemd.service(5): ``$VAR`` splits into words, ``${VAR}`` stays one word."""
    argv: list[str] = []
    for word in shlex.split(cmdline):
        m = re.fullmatch(r"\$(\w+)", word)
        if m:
            argv.extend(env.get(m.group(1), "").split())
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda mm: env.get(mm.group(1), ""), word))
    return argv


def seconds(spec: str) -> float:
    m = re.fullmatch(r"([\d.]+)\s*(ms|s|min|)", spec)
    if not m:
        raise SystemExit(f"cannot parse time span {spec!r}")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1, "": 1, "min": 60}[m.group(2)]


def _publish(path: Path, text: str) -> None:
    """Write then rename: the host polls for the file over 9p and must never see it empty."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("unit", type=Path)
    ap.add_argument("state", type=Path)
    ap.add_argument("--exe", required=True)
    ap.add_argument("--dropin", type=Path, action="append", default=[])
    a = ap.parse_args()
    a.state.mkdir(parents=True, exist_ok=True)
    unit = parse_unit([a.unit, *a.dropin])
    env = environment(unit)
    argv = exec_argv(unit["ExecStart"][-1], env)
    argv[0] = a.exe
    sock_path = Path(f"/tmp/notify-{os.getpid()}")   # not on 9p: no sockets there
    sock_path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    env["NOTIFY_SOCKET"] = str(sock_path)
    if unit.get("WatchdogSec"):
        env["WATCHDOG_USEC"] = str(int(seconds(unit["WatchdogSec"][-1]) * 1e6))
    journal = open(a.state / "journal", "ab", buffering=0)
    st = os.fstat(journal.fileno())
    env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    (a.state / "argv").write_text("\n".join(argv) + "\n")
    log = open(a.state / "notify.log", "a", buffering=1)
    t0 = time.monotonic()

    def listen() -> None:
        while True:
            msg = sock.recv(4096).decode(errors="replace")
            for part in msg.split("\n"):
                log.write(f"{time.monotonic() - t0:.2f} {part}\n")
    threading.Thread(target=listen, daemon=True).start()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=journal,
                            stderr=journal, cwd="/")
    _publish(a.state / "pid", f"{proc.pid}\n")
    rc = proc.wait()
    time.sleep(0.2)                  # let the last datagrams land
    _publish(a.state / "exit", f"{rc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
