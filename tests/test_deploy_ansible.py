"""Fleet deployment, proven: the Ansible role applied over SSH to a real Debian 12 system
booted with systemd as PID 1, the service running hardened under real systemd on that
guest's /proc/kcore, scraped by a real Prometheus on the host; a second run changes nothing.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bed.boots import free_port
from tests.bed.kernels import debian_kernel
from tests.bed.prom import Prometheus
from tests.bed.sysguest import SystemGuest

pytestmark = [pytest.mark.realkernel]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _playbook(inventory: Path, extra: dict, log: Path) -> tuple[int, str]:
    env = {"ANSIBLE_CONFIG": str(REPO / "deploy/ansible/ansible.cfg"), "PATH": f"{BIN}:/usr/bin:/bin",
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "HOME": str(inventory.parent)}
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory),
                          str(REPO / "deploy/ansible/playbook.yml"), "-e", json.dumps(extra)],
                         capture_output=True, text=True, env=env, timeout=1500)
    log.write_text(res.stdout + res.stderr)
    return res.returncode, res.stdout


def _recap(out: str) -> dict[str, int]:
    m = re.search(r"fleet\s*:\s*(.*)", out.split("PLAY RECAP")[-1])
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel or variable, PromQL) for every query in the Grafana dashboard, with Grafana's
    variables replaced the way Grafana does for "All"."""
    dash = json.loads((REPO / "deploy/grafana/mmrwatch.json").read_text())
    subst = {"$instance": ".*", "$blade": ".*", "$__rate_interval": "1m"}
    out = []
    for p in dash["panels"]:
        for t in p["targets"]:
            out.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["definition"])
            out.append((f"${v['name']}", m.group(1)))
    for i, (name, expr) in enumerate(out):
        for k, val in subst.items():
            expr = expr.replace(k, val)
        out[i] = (name, expr)
    return out


def test_role_deploys_hardened_service_scraped_by_prometheus(bed, tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, str(REPO / "deploy/wheelhouse"), str(dist)], check=True,
                   capture_output=True, timeout=900)
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
        extra = {"mmrwatch_wheelhouse_dir": str(dist / "wheelhouse"),
                 "mmrwatch_web_listen_address": "0.0.0.0:19864", "mmrwatch_interval": 10,
                 "mmrwatch_basic_auth_users": {"prometheus": hashed}}
        rc, out = _playbook(inv, extra, tmp_path / "first.log")
        assert rc == 0, out[-4000:]
        first = _recap(out)
        assert first["failed"] == 0 and first["changed"] > 0
        rc, out = _playbook(inv, extra, tmp_path / "second.log")
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
        import urllib.error
        import urllib.request
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{agent_port}/metrics", timeout=60)
            unauth = "200"
        except urllib.error.HTTPError as e:
            unauth = str(e.code)
        with Prometheus(tmp_path / "prom", [f"127.0.0.1:{agent_port}"], [], job_extra=(
                "    basic_auth:\n      username: prometheus\n      password: s3cret\n")) as prom:
            up = prom.wait("a successful check scraped from the guest", lambda: [
                r for r in prom.query('mmrwatch_collector_success{collector="pgtable"} == 1')],
                timeout=600)
            ranges = prom.query("sum(mmrwatch_ranges)")
            kernel = prom.query("mmrwatch_kernel_info")
            prom.wait("a CPU rate over two checks", lambda: prom.query(
                "rate(mmrwatch_walk_cpu_seconds_total[1m])"), timeout=300)
            dashboard = {name: prom.query(expr) for name, expr in _dashboard_queries()}
        journal = g.ssh("journalctl -u mmrwatch --no-pager -o cat", check=False).stdout
        status = g.ssh("systemctl show mmrwatch -p StatusText").stdout
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["DynamicUser"] == "yes"
    assert props["NRestarts"] == "0", journal[-3000:]
    assert f"prometheus: '{hashed}'" in web_config and unauth == "401"
    assert score <= 2.5
    assert up and float(ranges[0]["value"][1]) >= 1                 # EFI runtime regions
    assert kernel[0]["metric"]["release"] == k.release
    # the default deploy needs no debug package: BTF + the kernel's own kallsyms (6.0+: no
    # CAP_SYSLOG drop-in)
    assert kernel[0]["metric"]["types"] == "btf" and kernel[0]["metric"]["symbols"] == "kallsyms"
    assert "kallsyms.conf" not in dropins
    assert "ranges mapped as required" in status, status
    assert "check ok" in journal and "Traceback" not in journal
    # every dashboard query is valid PromQL against the real server; the ones that must
    # have data on a healthy fleet do
    for name in ("Hosts with unmapped firmware ranges", "Checks failing", "Check success",
                 "Check duration", "Versions across the fleet", "CPU spent in checks",
                 "$instance", "Oldest successful check"):
        assert dashboard[name], name
    assert float(dashboard["Hosts with unmapped firmware ranges"][0]["value"][1]) == 0
    assert dashboard["$instance"][0]["metric"]["instance"] == f"127.0.0.1:{agent_port}"
