"""Fleet deployment, proven: the Ansible role, copied alone out of this repository, applied
over SSH to a real Debian 12 system booted with systemd as PID 1 with its default listen
address, the service running hardened under real systemd on that guest's /proc/kcore,
scraped over TLS with basic auth (one role variable each; the key stays root-only on the
guest) by a real Prometheus on the host configured from deploy/prometheus/scrape.yml (its
TLS and basic-auth lines uncommented, targets replaced) with the shipped alert rules; a
second run changes nothing.
"""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.bed.boots import free_port
from tests.bed.kernels import debian_kernel
from tests.bed.prom import Prometheus, dashboard_queries
from tests.bed.sysguest import SystemGuest

pytestmark = [pytest.mark.realkernel, pytest.mark.sysguest, pytest.mark.ansible]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _playbook(project: Path, inventory: Path, extra: dict, log: Path) -> tuple[int, str]:
    # ssh's ControlMaster socket path must fit a sockaddr_un (108 bytes): not under a deep
    # pytest basetemp, in a short directory of its own
    cp_dir = Path(tempfile.mkdtemp(prefix="mmrw-cp-", dir="/tmp"))
    env = {"ANSIBLE_CONFIG": str(project / "ansible.cfg"), "PATH": f"{BIN}:/usr/bin:/bin",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "HOME": str(inventory.parent),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp_dir)}
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory),
                          str(project / "playbook.yml"), "-e", json.dumps(extra)],
                         capture_output=True, text=True, env=env, timeout=1500)
    shutil.rmtree(cp_dir, ignore_errors=True)
    log.write_text(res.stdout + res.stderr)
    return res.returncode, res.stdout


def _recap(out: str) -> dict[str, int]:
    m = re.search(r"fleet\s*:\s*(.*)", out.split("PLAY RECAP")[-1])
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def _scrape_example(target: str, ca_file: Path, password_file: Path) -> list[dict]:
    """deploy/prometheus/scrape.yml's jobs as an operator enabling TLS and basic auth uses
    them: the example's commented settings uncommented (from ``# scheme: https`` to the end
    of the comment), its file paths and targets replaced."""
    out, on = [], False
    for ln in (REPO / "deploy/prometheus/scrape.yml").read_text().splitlines():
        if ln.strip() == "# scheme: https":
            on = True
        elif on and not ln.lstrip().startswith("#"):
            on = False
        out.append(ln.replace("# ", "", 1) if on else ln)
    jobs = yaml.safe_load("\n".join(out))["scrape_configs"]
    for job in jobs:
        assert job["scheme"] == "https" and job["tls_config"]["ca_file"], job
        job["tls_config"]["ca_file"] = str(ca_file)
        assert job["basic_auth"]["password_file"], job
        job["basic_auth"]["password_file"] = str(password_file)
        for sc in job["static_configs"]:
            assert all(t.endswith(":19864") for t in sc["targets"])
            sc["targets"] = [target]
    return jobs


def test_role_deploys_hardened_service_scraped_by_prometheus(bed, tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, str(REPO / "deploy/wheelhouse"), str(dist)], check=True,
                   capture_output=True, timeout=900)
    project = tmp_path / "ansible"               # the role alone, outside this repository
    shutil.copytree(REPO / "deploy/ansible", project)
    k = debian_kernel()
    agent_port = free_port()
    with SystemGuest(k, tmp_path / "guest", {agent_port: 19864}) as g:
        inv = tmp_path / "inventory"
        inv.write_text(f"[uv_fleet]\nfleet ansible_host=127.0.0.1 ansible_port={g.ssh_port} "
                       f"ansible_user=root ansible_ssh_private_key_file={g.key} "
                       "ansible_ssh_common_args='-o StrictHostKeyChecking=no "
                       "-o UserKnownHostsFile=/dev/null'\n")
        import bcrypt
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
        # TLS files on the host, root-only (the role hands them to the dynamic user as
        # systemd credentials)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                       check=True, capture_output=True)
        for name in ("cert.pem", "key.pem"):
            g.ssh(f"umask 077; mkdir -p /etc/ssl/mmrwatch; cat > /etc/ssl/mmrwatch/{name} <<'EOF'\n"
                  f"{(tmp_path / name).read_text()}EOF")
        # the default listen address (the guest's port 19864 is forwarded from the host,
        # reached through the guest's own network interface, not its loopback)
        # TLS and basic auth: one variable each
        extra = {"mmrwatch_wheelhouse_dir": str(dist / "wheelhouse"), "mmrwatch_interval": 10,
                 "mmrwatch_tls_server_config": {"cert_file": "/etc/ssl/mmrwatch/cert.pem",
                                                "key_file": "/etc/ssl/mmrwatch/key.pem"},
                 "mmrwatch_basic_auth_users": {"prometheus": hashed}}
        rc, out = _playbook(project, inv, extra, tmp_path / "first.log")
        assert rc == 0, out[-4000:]
        first = _recap(out)
        assert first["failed"] == 0 and first["changed"] > 0
        rc, out = _playbook(project, inv, extra, tmp_path / "second.log")
        assert rc == 0, out[-4000:]
        assert _recap(out)["changed"] == 0, out[-4000:]           # idempotent

        dropins = g.ssh("ls /etc/systemd/system/mmrwatch.service.d/", check=False).stdout
        show = g.ssh("systemctl show mmrwatch -p ActiveState -p SubState -p Type "
                     "-p NRestarts -p StatusText -p User -p DynamicUser").stdout
        props = dict(ln.split("=", 1) for ln in show.splitlines() if "=" in ln)
        sec = g.ssh("systemd-analyze security mmrwatch --no-pager", check=False).stdout
        score = float(re.search(r"Overall exposure level for mmrwatch.service: ([\d.]+)",
                                sec).group(1))
        print(f"systemd-analyze security mmrwatch (on the guest): {score}")
        web_config = g.ssh("cat /etc/mmrwatch/web-config.yml").stdout
        listening = g.ssh("ss -Hltn sport = :19864", check=False).stdout
        key_mode = g.ssh("stat -c %a:%U /etc/ssl/mmrwatch/key.pem").stdout.strip()
        man = g.ssh("test -s /opt/mmrwatch/share/man/man1/mmrwatch.1 && echo man",
                    check=False).stdout
        import ssl
        import urllib.error
        import urllib.request
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{agent_port}/metrics", timeout=60,
                                   context=ctx)
            unauth = "200"
        except urllib.error.HTTPError as e:
            unauth = str(e.code)
        (tmp_path / "mmrwatch.pass").write_text("s3cret\n")
        jobs = _scrape_example(f"127.0.0.1:{agent_port}", tmp_path / "cert.pem",
                               tmp_path / "mmrwatch.pass")
        with Prometheus(tmp_path / "prom", [], [REPO / "deploy/prometheus/mmrwatch.rules.yml"],
                        scrape_configs=jobs) as prom:
            up = prom.wait("a successful check scraped from the guest", lambda: [
                r for r in prom.query('mmrwatch_collector_success{collector="pgtable"} == 1')],
                timeout=600)
            ranges = prom.query("sum(mmrwatch_ranges)")
            kernel = prom.query("mmrwatch_kernel_info")
            prom.wait("a CPU rate over two checks", lambda: prom.query(
                "rate(mmrwatch_walk_cpu_seconds_total[1m])"), timeout=300)
            dashboard = {name: prom.query(expr) for name, expr in
                         dashboard_queries(REPO / "deploy/grafana/mmrwatch.json")}
            up_job = prom.query('up{job="mmrwatch"}')
            alerts = prom.alerts()
        journal = g.ssh("journalctl -u mmrwatch --no-pager -o cat", check=False).stdout
        status = g.ssh("systemctl show mmrwatch -p StatusText").stdout
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["DynamicUser"] == "yes"
    assert props["NRestarts"] == "0", journal[-3000:]
    assert f"prometheus: '{hashed}'" in web_config and unauth == "401"
    assert "key_file: /run/credentials/mmrwatch.service/tls-key" in web_config, web_config
    assert key_mode == "600:root" and "tls.conf" in dropins
    assert score <= 2.5
    assert up and float(ranges[0]["value"][1]) >= 1                 # EFI runtime regions
    # the default deploy is what the scrape example scrapes: up, and no alert even pending
    assert [r["value"][1] for r in up_job] == ["1"], up_job
    assert alerts == [], alerts
    assert "0.0.0.0:19864" in listening, listening
    assert man.strip() == "man"                                     # man page installed
    assert kernel[0]["metric"]["release"] == k.release
    # the default deploy needs no debug package: BTF + the kernel's own kallsyms (6.0+: no
    # CAP_SYSLOG drop-in)
    assert kernel[0]["metric"]["types"] == "btf" and kernel[0]["metric"]["symbols"] == "kallsyms"
    assert "kallsyms.conf" not in dropins
    assert "ranges mapped as required" in status, status
    assert "check ok" in journal and "Traceback" not in journal
    # every dashboard query is valid PromQL against the real server; the ones that must
    # have data on a healthy fleet do
    for name in ("Hosts with unmapped firmware ranges/A", "Checks failing/A", "Check success/A",
                 "Check duration/A", "Versions across the fleet/A", "CPU spent in checks/A",
                 "Stale bytes per mm/A", "Wrong cache mode bytes per mm/A",
                 "$instance", "$job", "Oldest successful check/A"):
        assert dashboard[name], name
    assert float(dashboard["Hosts with unmapped firmware ranges/A"][0]["value"][1]) == 0
    assert dashboard["$instance"][0]["metric"]["instance"] == f"127.0.0.1:{agent_port}"
