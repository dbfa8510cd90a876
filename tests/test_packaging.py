"""``python -m build`` as a packager runs it: no warnings, and the sdist and wheel carry
what they claim (PEP 639 license expression and the GPL-2.0 text, the man page installed
to share/man/man1, no tests in the sdist: they need QEMU, kernels and Prometheus)."""
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import mmrwatch

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                              ".hypothesis", ".pytest_cache")


def test_build_is_clean_and_ships_license_and_man_page(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"),
                        str(src)], capture_output=True, text=True, env=env, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    noisy = [ln for ln in out.splitlines() if "warn" in ln.lower() or "deprecat" in ln.lower()]
    assert not noisy, "\n".join(noisy)

    v = mmrwatch.__version__
    with tarfile.open(tmp_path / "dist" / f"mmrwatch-{v}.tar.gz") as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"LICENSE", "docs/mmrwatch.1", "docs/runbook.md", "pyproject.toml",
            "systemd/mmrwatch.service", "deploy/prometheus/mmrwatch.rules.yml",
            "deploy/ansible/roles/mmrwatch/tasks/main.yml"} <= names
    assert not [n for n in names if n.startswith("tests/")], "sdist carries tests"

    with zipfile.ZipFile(tmp_path / "dist" / f"mmrwatch-{v}-py3-none-any.whl") as w:
        files = set(w.namelist())
        meta = w.read(f"mmrwatch-{v}.dist-info/METADATA").decode()
        lic = w.read(f"mmrwatch-{v}.dist-info/licenses/LICENSE")
        man = w.read(f"mmrwatch-{v}.data/data/share/man/man1/mmrwatch.1")
    assert lic == (REPO / "LICENSE").read_bytes()
    assert b"GNU GENERAL PUBLIC LICENSE" in lic and b"Version 2, June 1991" in lic
    gpl2 = Path("/usr/share/common-licenses/GPL-2")
    if gpl2.exists():
        assert lic == gpl2.read_bytes()
    assert man == (REPO / "docs/mmrwatch.1").read_bytes()
    assert "mmrwatch/report.schema.json" in files
    headers = [ln for ln in meta.split("\n\n", 1)[0].splitlines()]
    assert "License-Expression: GPL-2.0-only" in headers
    assert "License-File: LICENSE" in headers
    assert not [h for h in headers if h.startswith("Classifier: License ::")]  # PEP 639
    assert not [h for h in headers if h.startswith(("Project-URL:", "Home-page:"))]
    classifiers = [h for h in headers if h.startswith("Classifier: ")]
    assert "Classifier: Operating System :: POSIX :: Linux" in classifiers
    assert "Classifier: Programming Language :: Python :: 3.11" in classifiers


def test_classifiers_are_pypis():
    import tomllib

    from trove_classifiers import classifiers, deprecated_classifiers
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    unknown = [c for c in project["classifiers"] if c not in classifiers]
    assert not unknown and not set(project["classifiers"]) & set(deprecated_classifiers)
    assert project["license"] == "GPL-2.0-only" and project["license-files"] == ["LICENSE"]
    assert "urls" not in project          # no project home exists yet: none rather than made up
