"""A throwaway TLS server config for tests: a self-signed certificate for 127.0.0.1 and the
web-config.yml that serves it (exporter-toolkit format, as `serve --web.config.file` reads)."""
from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed_web_config(d: Path) -> Path:
    """Write ``k.pem``, ``c.pem`` (CN and SAN 127.0.0.1, 2 days) and ``web.yml`` into ``d``;
    returns ``web.yml`` (clients verify against ``d / "c.pem"``)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
                   check=True, capture_output=True)
    web = d / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n")
    return web
