"""Kernels for the test bed: Debian 12's own, and a UV-enabled build of Debian's source.

``debian_kernel()`` downloads the current ``linux-image-<abi>`` and its ``-dbg`` package with
``apt-get download`` (nothing is installed on the host) and keeps only vmlinuz, vmlinux and the
few modules the initramfs needs.  ``uv_kernel()`` builds ``linux-source-6.1`` (or 6.12) with
``allnoconfig`` plus ``uv.config``: CONFIG_X86_UV=y, which Debian's kernels lack, and only
what the guests use, so that a cold run's two builds fit its time (issue 14).
Both are cached under ``~/.cache/mmrwatch`` keyed by exact version.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cache import cache_root, log, provide, run

FRAGMENT = Path(__file__).with_name("uv.config")
# per-series additions, appended after FRAGMENT (renamed options)
EXTRA_FRAGMENT = {"6.12": Path(__file__).with_name("uv-6.12.config")}
# Modules Debian builds as =m that the busybox guest needs (fw_cfg for vmcoreinfo, 9p, net).
DEBIAN_MODULES = ["qemu_fw_cfg", "9p", "9pnet_virtio", "virtio_net", "virtio_console"]


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel and what drgn needs to read it."""

    name: str            # "debian" or "uv"
    release: str         # uname -r of the guest
    bzimage: Path
    vmlinux: Path
    modules: Path | None  # directory holding lib/modules/<release> (Debian only)
    system_map: Path | None = None   # the real one (Debian: from the -dbg package)


def _apt_version(pkg: str) -> str:
    out = run(["apt-cache", "policy", pkg], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            return line.split()[1]
    raise RuntimeError(f"apt knows no candidate for {pkg}")


def _apt_suite(suite: str) -> list[str]:
    """apt options for another Debian suite, with lists of its own in the cache: the
    host's apt sources are never changed (``apt-get update`` of one private list)."""
    if suite == "bookworm":
        return []
    base = cache_root() / "apt" / suite
    (base / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (base / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    src = base / "sources.list"
    key = "/usr/share/keyrings/debian-archive-keyring.gpg"
    src.write_text(f"deb [signed-by={key}] http://deb.debian.org/debian {suite} main\n"
                   f"deb [signed-by={key}] http://deb.debian.org/debian-security "
                   f"{suite}-security main\n")
    opts = ["-o", f"Dir::Etc::sourcelist={src}", "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={base / 'lists'}", "-o", f"Dir::Cache={base}",
            "-o", "APT::Get::List-Cleanup=0"]
    stamp = base / "updated"
    if not stamp.exists() or time.time() - stamp.stat().st_mtime > 86400:
        run(["apt-get", *opts, "update", "-qq"], stdout=subprocess.DEVNULL)
        stamp.touch()
    return opts


def debian_abi(suite: str = "bookworm") -> str:
    """The ABI of a suite's current kernel, e.g. ``6.1.0-56-amd64``."""
    out = run(["apt-cache", *_apt_suite(suite), "depends", "linux-image-amd64"],
              capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-") and line.endswith("-amd64"):
            return line.split("linux-image-", 1)[1]
    raise RuntimeError(f"cannot find the current Debian {suite} kernel ABI (apt-get update?)")


def _build_debian(abi: str, out: Path, apt: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        t0 = time.monotonic()
        log(f"downloading linux-image-{abi} and its -dbg package (~900 MB)")
        run(["apt-get", *apt, "download", "-q", f"linux-image-{abi}", f"linux-image-{abi}-dbg"],
            cwd=tmp, stdout=subprocess.DEVNULL)
        img = glob.glob(f"{tmp}/linux-image-{abi}_*.deb")[0]
        dbg = glob.glob(f"{tmp}/linux-image-{abi}-dbg_*.deb")[0]
        kpkg = Path(tmp, "kpkg")
        run(["dpkg-deb", "-x", img, str(kpkg)])
        shutil.copy(kpkg / "boot" / f"vmlinuz-{abi}", out / "bzImage")
        # the image package's System.map is Debian's placeholder (kept for its test)
        shutil.copy(kpkg / "boot" / f"System.map-{abi}", out / "System.map.placeholder")
        mods = out / "lib" / "modules" / abi
        src = kpkg / "lib" / "modules" / abi
        mods.mkdir(parents=True)
        for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            if (src / f).exists():
                shutil.copy(src / f, mods / f)
        shutil.copytree(src / "kernel", mods / "kernel")
        run(["depmod", "-b", str(out), abi])
        log("extracting vmlinux and System.map from the -dbg package")
        # both sit near the start of data.tar: stop after the first match of each (dpkg-deb
        # then dies of SIGPIPE, which is expected; the files' presence is the real check).
        subprocess.run(f"dpkg-deb --fsys-tarfile '{dbg}' | tar -x -C '{tmp}' --occurrence=1 "
                       f"--wildcards './usr/lib/debug/boot/vmlinux-{abi}' "
                       f"'./usr/lib/debug/boot/System.map-{abi}'", shell=True)
        for name, dst in ((f"vmlinux-{abi}", "vmlinux"), (f"System.map-{abi}", "System.map")):
            got = Path(tmp, "usr/lib/debug/boot", name)
            if not got.exists():
                raise RuntimeError(f"{name} not found in {dbg}")
            shutil.move(str(got), out / dst)
        log(f"Debian kernel {abi} ready in {time.monotonic() - t0:.0f} s")


def debian_cache_name(abi: str) -> str:
    """The cache entry of a Debian kernel ("-sm": with its System.map)."""
    return f"kernels/debian-{abi}-sm"


def debian_kernel(suite: str = "bookworm") -> Kernel:
    """A Debian suite's current kernel: image, modules, DWARF vmlinux and System.map,
    downloaded once per ABI (bookworm: 6.1, the stock kernel; bullseye: 5.10, a kernel
    before kallsyms in VMCOREINFO)."""
    apt = _apt_suite(suite)
    abi = debian_abi(suite)
    d = provide(debian_cache_name(abi), lambda out: _build_debian(abi, out, apt))
    return Kernel("debian" if suite == "bookworm" else f"debian-{suite}", abi, d / "bzImage",
                  d / "vmlinux", d, d / "System.map")


def bullseye_kernel() -> Kernel:
    return debian_kernel("bullseye")


# UV-enabled kernels: each series from the Debian suite that ships its source, and the
# name the test bed knows it by (boot plans, `python -m tests.bed.kernels NAME`, cache)
UV_SERIES = {"6.1": "bookworm", "6.12": "trixie"}
UV_TAGS = {"6.1": "uv", "6.12": "uv612"}


def uv_key(series: str = "6.1") -> str:
    """Cache key: source package version + hash of the config fragment and this recipe."""
    h = hashlib.sha256(FRAGMENT.read_bytes())
    h.update(b"recipe-2")          # 2: allnoconfig + fragment (was x86_64_defconfig)
    if series in EXTRA_FRAGMENT:
        h.update(EXTRA_FRAGMENT[series].read_bytes())
    pkg = f"linux-source-{series}"
    version = _apt_version(pkg) if series == "6.1" else _apt_version_in(pkg, UV_SERIES[series])
    return f"{version}-{h.hexdigest()[:12]}"


def _apt_version_in(pkg: str, suite: str) -> str:
    out = run(["apt-cache", *_apt_suite(suite), "policy", pkg], capture_output=True,
              text=True).stdout
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            return line.split()[1]
    raise RuntimeError(f"apt knows no candidate for {pkg} in {suite}")


def _source_tarball(series: str, tmp: Path) -> Path:
    """linux-source-<series>.tar.xz: installed on the host (6.1, bookworm) or downloaded
    from its suite with ``apt-get download`` and unpacked here (never installed)."""
    if UV_SERIES[series] == "bookworm":
        tarball = Path(f"/usr/src/linux-source-{series}.tar.xz")
        if not tarball.exists():
            raise RuntimeError(f"linux-source-{series} is not installed "
                               f"(apt-get install linux-source-{series})")
        return tarball
    log(f"downloading linux-source-{series} ({UV_SERIES[series]}, ~150 MB)")
    run(["apt-get", *_apt_suite(UV_SERIES[series]), "download", "-q", f"linux-source-{series}"],
        cwd=tmp, stdout=subprocess.DEVNULL)
    deb = glob.glob(f"{tmp}/linux-source-{series}_*.deb")[0]
    run(["dpkg-deb", "-x", deb, str(tmp / "pkg")])
    os.unlink(deb)                      # 150 MB the cached kernel does not need
    return tmp / "pkg" / "usr" / "src" / f"linux-source-{series}.tar.xz"


def _build_uv(out: Path, series: str = "6.1") -> None:
    work = out / "build"
    t0 = time.monotonic()
    tarball = _source_tarball(series, out)
    log(f"extracting linux-source-{series}")
    run(["tar", "-xf", str(tarball), "-C", str(out)])
    shutil.rmtree(out / "pkg", ignore_errors=True)
    src = out / f"linux-source-{series}"
    log("configuring: allnoconfig + tests/bed/uv.config")
    cfg = work / ".config"
    extra = EXTRA_FRAGMENT.get(series)
    work.mkdir(parents=True, exist_ok=True)
    wanted = work / "mmrwatch.config"       # allnoconfig forces each of these lines
    wanted.write_text(FRAGMENT.read_text() + (extra.read_text() if extra is not None else ""))
    run(["make", "-s", "-C", str(src), f"O={work}", f"KCONFIG_ALLCONFIG={wanted}",
         "allnoconfig"], stdout=subprocess.DEVNULL)
    _verify_config(cfg, wanted.read_text())
    jobs = str((os.cpu_count() or 2) + 1)
    log(f"building bzImage with -j{jobs} (about 7 min on 2 idle cores; output in {out}/build.log)")
    with open(out / "build.log", "w") as logf:
        run(["make", "-C", str(src), f"O={work}", f"-j{jobs}", "bzImage"],
            stdout=logf, stderr=subprocess.STDOUT)
    release = (work / "include/config/kernel.release").read_text().strip()
    shutil.copy(work / "arch/x86/boot/bzImage", out / "bzImage")
    shutil.copy(work / "vmlinux", out / "vmlinux")
    shutil.copy(work / "System.map", out / "System.map")
    shutil.copy(cfg, out / "config")
    (out / "release").write_text(release + "\n")
    shutil.rmtree(src)
    shutil.rmtree(work)
    log(f"UV kernel {release} built in {time.monotonic() - t0:.0f} s")


def _verify_config(cfg: Path, text: str) -> None:
    """Refuse a config where Kconfig silently dropped or changed one of our requests (the
    fragment ``text``)."""
    have = {}
    for line in cfg.read_text().splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            have[k] = v
    missing = []
    renamed = {ln.split()[-1] for ln in text.splitlines() if ln.startswith("# renames ")}
    for line in text.splitlines():
        line = line.strip()
        if line.split("=", 1)[0] in renamed:
            continue
        if line.startswith("CONFIG_") and "=" in line and not line.endswith("=n"):
            key, want = line.split("=", 1)
            if have.get(key) != want:
                missing.append(f"{key}={want}")
    if missing:
        raise RuntimeError(f"Kconfig dropped requested options: {' '.join(missing)}")


def uv_cache_name(series: str = "6.1") -> str:
    """The cache entry of a UV kernel (its source version and fragment in the key)."""
    return f"kernels/{UV_TAGS[series]}-{uv_key(series)}"


def uv_kernel(series: str = "6.1") -> Kernel:
    """A UV-enabled kernel of ``series`` (6.1, 6.12), built once per source version and
    fragment."""
    if os.environ.get("MMRWATCH_NO_UV_KERNEL"):
        # tests/run's streams that need no UV kernel run beside its build; waiting here would
        # serialise them
        raise RuntimeError("this test needs the UV kernel: mark it `uvkernel` (tests/run "
                           "runs those after the background build)")
    d = provide(uv_cache_name(series), lambda out: _build_uv(out, series))
    return Kernel("uv", (d / "release").read_text().strip(), d / "bzImage", d / "vmlinux", None,
                  d / "System.map")


def provision_side() -> None:
    """Everything but the UV kernel: the Debian kernel, Prometheus, the Debian 12 rootfs."""
    from .prom import prometheus_dir
    from .sysguest import rootfs
    log(f"debian kernel {debian_kernel().release}")
    log(f"debian 11 kernel {bullseye_kernel().release}")
    log(f"prometheus + promtool: {prometheus_dir()}")
    log(f"Debian 12 root filesystem: {rootfs()}")


def provision_all() -> None:
    """Everything the suite boots, built once: the UV kernel build (CPU-bound) runs while
    the downloads and the Debian root filesystem (network/IO-bound) proceed beside it."""
    import threading
    errors: list[BaseException] = []

    def side() -> None:
        try:
            provision_side()
        except BaseException as e:   # reported after the UV build, not lost in the thread
            errors.append(e)
    t = threading.Thread(target=side)
    t.start()
    k = uv_kernel()
    log(f"uv kernel {k.release}: {k.bzimage.parent}")
    t.join()
    if errors:
        raise errors[0]


if __name__ == "__main__":
    import sys
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which == "all":
        provision_all()
    if which == "side":           # everything but the UV kernel
        provision_side()
    if which == "debian":
        k = debian_kernel()
        log(f"debian kernel {k.release}: {k.bzimage.parent}")
    for series, tag in UV_TAGS.items():
        if which == tag:
            k = uv_kernel(series)
            log(f"{tag} kernel {k.release}: {k.bzimage.parent}")
