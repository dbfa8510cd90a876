"""The shipped unit, drop-in and alert rules, checked by the tools operators use."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bed.prom import promtool

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "mmrwatch.service"
DROPIN = REPO / "systemd" / "mmrwatch-textfile.conf"
KALLSYMS = REPO / "systemd" / "mmrwatch-kallsyms.conf"
RULES = REPO / "deploy" / "prometheus"


def _root(tmp_path: Path, dropin: str) -> Path:
    """A root with the unit installed as a package would, for systemd-analyze --root."""
    root = tmp_path / f"root-{dropin}"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").mkdir()
    shutil.copy2("/bin/kill", root / "bin/kill")
    shutil.copy2("/bin/sh", root / "bin/sh")              # the kallsyms drop-in's ExecStartPre
    (root / "opt/mmrwatch/bin").mkdir(parents=True)
    shutil.copy2(Path(sys.executable).parent / "mmrwatch", root / "opt/mmrwatch/bin/mmrwatch")
    shutil.copy2(UNIT, root / "etc/systemd/system/mmrwatch.service")
    if dropin != "http":
        d = root / "etc/systemd/system/mmrwatch.service.d"
        d.mkdir()
        shutil.copy2(DROPIN if dropin == "textfile" else KALLSYMS, d / f"{dropin}.conf")
    return root


@pytest.mark.parametrize("dropin", ["http", "textfile", "kallsyms"])
def test_unit_verifies_and_is_hardened(tmp_path, dropin):
    """The base unit, textfile mode, and the pre-6.0 kallsyms drop-in (a privileged
    ExecStartPre copies /proc/kallsyms; the daemon gains no capability) score 2.0 or better
    (measured: 2.0, 1.7, 2.0)."""
    root = _root(tmp_path, dropin)
    v = subprocess.run(["systemd-analyze", "verify", f"--root={root}",
                        "/etc/systemd/system/mmrwatch.service"], capture_output=True, text=True)
    assert v.returncode == 0 and not v.stderr.strip(), v.stderr
    s = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                        "mmrwatch.service"], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for mmrwatch.service: ([\d.]+)", s.stdout)
    assert m, s.stdout + s.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security ({dropin}): {score}")
    assert score <= 2.0


def test_unit_keeps_what_kcore_needs():
    text = UNIT.read_text() + DROPIN.read_text()
    active = [ln.split("=", 1)[0] for ln in text.splitlines()
              if ln and not ln.startswith("#") and "=" in ln]
    for breaks_kcore in ("ProtectKernelTunables", "PrivateDevices", "ProcSubset"):
        assert breaks_kcore not in active
    assert "CapabilityBoundingSet=CAP_SYS_RAWIO" in DROPIN.read_text()
    assert "Type=notify" in UNIT.read_text() and "WatchdogSec=" in UNIT.read_text()


def test_alert_rules_pass_promtool():
    c = subprocess.run([str(promtool()), "check", "rules", str(RULES / "mmrwatch.rules.yml")],
                       capture_output=True, text=True)
    assert c.returncode == 0, c.stdout + c.stderr
    t = subprocess.run([str(promtool()), "test", "rules", "mmrwatch.rules.test.yml"],
                       cwd=RULES, capture_output=True, text=True)
    assert t.returncode == 0 and "SUCCESS" in t.stdout, t.stdout + t.stderr


def _rules() -> dict:
    import yaml
    return yaml.safe_load((RULES / "mmrwatch.rules.yml").read_text())


def _alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in _rules()["groups"] for r in g["rules"] if "alert" in r}


def _anchors(md: str) -> set[str]:
    """GitHub's heading anchors of a Markdown file."""
    out = set()
    for ln in md.splitlines():
        if ln.startswith("#"):
            title = ln.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_every_alert_has_summary_description_and_runbook_in_the_repo():
    runbook = REPO / "docs" / "runbook.md"
    anchors = _anchors(runbook.read_text())
    bases = set()
    for name, rule in _alerts().items():
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, name
        assert ann["summary"].strip() and len(ann["description"]) > 40, name
        base, _, anchor = ann["runbook_url"].partition("#")
        assert base.endswith("/docs/runbook.md") and anchor == name.lower(), name
        assert anchor in anchors, f"{name}: no section #{anchor} in docs/runbook.md"
        bases.add(base)
        assert rule["labels"]["severity"] in ("critical", "warning"), name
    assert len(bases) == 1                  # one runbook, one place to change its URL
    text = runbook.read_text()
    for must in ("mmrwatch report --live", "amtool silence add", "Collect for the vendor"):
        assert must in text


def test_job_selector_in_one_place():
    """Only `up` needs the job (every other alert selects mmrwatch_* names and so works in
    textfile mode, scraped under node_exporter's job); renaming it there and in the scrape
    config's job_name is all a fleet with another job name changes (shown by promtool on
    renamed copies)."""
    text = (RULES / "mmrwatch.rules.yml").read_text()
    exprs = "\n".join(str(r["expr"]) for g in _rules()["groups"] for r in g["rules"])
    assert len(re.findall(r"\bjob\s*[=!]~?", exprs)) == 1 and 'up{job="mmrwatch"}' in exprs
    import yaml
    scrape = yaml.safe_load((RULES / "scrape.yml").read_text())
    assert [j["job_name"] for j in scrape["scrape_configs"]] == ["mmrwatch"]


def test_rules_work_under_another_job_name(tmp_path):
    (tmp_path / "mmrwatch.rules.yml").write_text(
        (RULES / "mmrwatch.rules.yml").read_text().replace('up{job="mmrwatch"}', 'up{job="uvx"}'))
    (tmp_path / "mmrwatch.rules.test.yml").write_text(
        (RULES / "mmrwatch.rules.test.yml").read_text().replace('job="mmrwatch"', 'job="uvx"')
        .replace("job: mmrwatch", "job: uvx"))
    t = subprocess.run([str(promtool()), "test", "rules", "mmrwatch.rules.test.yml"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert t.returncode == 0 and "SUCCESS" in t.stdout, t.stdout + t.stderr


def test_recording_rules_named_and_used():
    """`level:metric:operations`, and each one read by an alert or the dashboard."""
    import json
    records = [r["record"] for g in _rules()["groups"] for r in g["rules"] if "record" in r]
    users = "\n".join(str(r["expr"]) for r in _alerts().values())
    dash = json.loads((REPO / "deploy/grafana/mmrwatch.json").read_text())
    users += "\n".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for rec in records:
        assert re.fullmatch(r"[a-z_]+:[a-z][a-z0-9_]*:[a-z0-9_]+", rec), rec
        assert re.search(rf"(?<![\w:]){re.escape(rec)}(?![\w:])", users), f"{rec} unused"


def test_promtool_tests_cover_every_alert_firing_and_not_firing():
    """For each alert in the rules file: a case where it fires, and one where it does not
    although its input series exist (pending, resolved, or below its threshold)."""
    import yaml
    doc = yaml.safe_load((RULES / "mmrwatch.rules.test.yml").read_text())
    assert doc["rule_files"] == ["mmrwatch.rules.yml"]
    fires, quiet = set(), set()
    for group in doc["tests"]:
        metrics = {re.match(r"[\w:]+", s["series"]).group(0) for s in group["input_series"]}
        for case in group.get("alert_rule_test", []):
            name = case["alertname"]
            if case.get("exp_alerts"):
                fires.add(name)
                for a in case["exp_alerts"]:
                    assert set(a["exp_annotations"]) == {"summary", "description",
                                                         "runbook_url"}, name
            elif name in _alerts() and any(
                    re.search(rf"\b{m}\b", str(_alerts()[name]["expr"])) for m in metrics):
                quiet.add(name)
    assert set(_alerts()) - fires == set(), "alerts never tested firing"
    assert set(_alerts()) - quiet == set(), "alerts never tested staying quiet on real input"
    assert (fires | quiet) - set(_alerts()) == set(), "tests for alerts that do not exist"


def test_scrape_example_and_role_defaults_agree():
    """A default deploy is scrapeable: the role listens on every interface on the port the
    example scrapes (the daemon's own default, 127.0.0.1, serves hand-started instances)."""
    import yaml
    defaults = yaml.safe_load((REPO / "deploy/ansible/roles/mmrwatch/defaults/main.yml")
                              .read_text())
    host, _, port = defaults["mmrwatch_web_listen_address"].rpartition(":")
    assert host in ("0.0.0.0", "", "[::]") and port == "19864"
    specs = yaml.safe_load((REPO / "deploy/ansible/roles/mmrwatch/meta/argument_specs.yml")
                           .read_text())["argument_specs"]["main"]["options"]
    assert specs["mmrwatch_web_listen_address"]["default"] == \
        defaults["mmrwatch_web_listen_address"]
    scrape = yaml.safe_load((RULES / "scrape.yml").read_text())
    for job in scrape["scrape_configs"]:
        for sc in job["static_configs"]:
            assert all(t.rsplit(":", 1)[1] == port for t in sc["targets"])
        assert job.get("metrics_path", "/metrics") == defaults["mmrwatch_web_telemetry_path"]
    default_args = (REPO / "deploy/default/mmrwatch").read_text()
    assert re.search(rf'^ARGS=".*--web.listen-address=0\.0\.0\.0:{port}', default_args, re.M)


ROLE = REPO / "deploy" / "ansible" / "roles" / "mmrwatch"


def test_role_is_self_contained():
    """Nothing in the role reaches outside it (it is copied into other Ansible projects);
    its copies of the unit and drop-ins are the repo's systemd/ files, byte for byte."""
    for f in ROLE.rglob("*"):
        if f.is_file() and f.suffix in (".yml", ".j2"):
            text = f.read_text()
            assert "../" not in text and "role_path" not in text, f
    for name in ("mmrwatch.service", "mmrwatch-textfile.conf", "mmrwatch-kallsyms.conf"):
        assert (ROLE / "files" / name).read_bytes() == (REPO / "systemd" / name).read_bytes(), \
            f"roles/mmrwatch/files/{name} differs from systemd/{name}: copy it again"
    import yaml
    specs = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    opts = specs["argument_specs"]["main"]["options"]
    assert opts["mmrwatch_wheelhouse_dir"].get("required") is True
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    assert "mmrwatch_wheelhouse_dir" not in defaults
    assert set(defaults) <= set(opts)                      # every default is validated
    readme = (ROLE / "README.md").read_text()
    for var in opts:
        assert f"`{var}`" in readme, f"role README does not document {var}"


def test_playbook_syntax(tmp_path):
    """The example playbook and the role parse (ansible-playbook --syntax-check), run from
    a copy holding only deploy/ansible, as it would be outside this repository."""
    shutil.copytree(REPO / "deploy" / "ansible", tmp_path / "ansible")
    inv = tmp_path / "inventory"
    inv.write_text("[uv_fleet]\nh1 ansible_host=192.0.2.1\n")
    env = {"ANSIBLE_CONFIG": str(tmp_path / "ansible/ansible.cfg"), "HOME": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "ANSIBLE_NOCOLOR": "1"}
    r = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check",
                        "-i", str(inv), str(tmp_path / "ansible/playbook.yml")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "WARNING" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_yaml_is_yamllint_clean():
    """Every YAML file of the repository under the committed .yamllint (strict: warnings
    fail too)."""
    assert (REPO / ".yamllint").is_file()
    files = subprocess.run(["git", "ls-files", "*.yml", "*.yaml", ".yamllint"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(files) >= 12
    r = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-f", "parsable",
                        *files], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_is_importable_and_complete():
    """What Grafana's import expects of a shared dashboard (``__inputs`` for the data source,
    ``__requires`` naming every panel type), shared crosshair, a ``job`` variable used by
    every query, and the wrong-cache and stale panels.  Its queries run against a real
    Prometheus in tests/test_dashboard.py."""
    import json
    dash = json.loads((REPO / "deploy/grafana/mmrwatch.json").read_text())
    assert [i["pluginId"] for i in dash["__inputs"]] == ["prometheus"]
    ds_input = "${" + dash["__inputs"][0]["name"] + "}"
    requires = {(r["type"], r["id"]) for r in dash["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= requires
    assert {("panel", p["type"]) for p in dash["panels"]} <= requires
    assert dash["graphTooltip"] == 1 and dash["id"] is None and dash["uid"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == ds_input
    assert variables["job"]["definition"] == "label_values(mmrwatch_build_info, job)"
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["expr"].count("mmrwatch_") == t["expr"].count('job=~"$job"'), t["expr"]
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("mmrwatch_wrong_cache_bytes", "mmrwatch_stale_bytes",
                   "mmrwatch_range_wrong_cache_bytes", "mmrwatch_range_stale_bytes"):
        assert metric + "{" in exprs, metric
    assert "DS_PROMETHEUS" not in json.dumps(dash["panels"])    # panels follow the variable
