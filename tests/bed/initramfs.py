"""A busybox initramfs whose /init turns the guest into a test-bed worker.

/init mounts proc/sys/dev/debugfs, loads the modules a distro kernel needs (in
``modprobe --show-depends`` order), mounts the host's 9p shares, builds a *sysroot* from the
host's read-only /usr, Python prefix, venv and repo (so in-guest commands see the same
paths as the host), announces ``MMRWATCH-READY`` on the serial console and then serves
commands dropped into the 9p exchange directory (``cmd/N.sh`` -> ``out/N.{out,err,rc}``).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from .cache import cache_root, run
from .kernels import DEBIAN_MODULES, Kernel

INIT = r"""#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
for m in $(cat /modules.list 2>/dev/null); do insmod "$m" 2>/dev/null; done
mkdir -p /xfer
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xfer /xfer
R=/sysroot
mkdir -p $R
mount -t tmpfs -o size=64m tmpfs $R
mkdir -p $R/usr $R/proc $R/sys $R/dev $R/tmp $R/etc $R/xfer $R/run
ln -s usr/bin $R/bin; ln -s usr/sbin $R/sbin; ln -s usr/lib $R/lib; ln -s usr/lib64 $R/lib64
cp /etc/ld.so.cache /etc/passwd /etc/group $R/etc/ 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 usr $R/usr
for spec in $(cat /shares.list); do
  tag=${spec%%=*}; dir=${spec#*=}
  mkdir -p $R$dir
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 $tag $R$dir
done
mount --bind /proc $R/proc; mount --bind /sys $R/sys; mount --bind /dev $R/dev
mount --bind /xfer $R/xfer
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
if [ -e /sys/class/net/eth0 ]; then
  ip link set lo up; ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
fi
if [ -e /proc/vmcore ]; then
  # We are the kdump capture kernel: save the crashed kernel's memory like a distro's
  # kdump service does (makedumpfile from the host's /usr), then power off.
  echo "MMRWATCH-CAPTURE start" > /dev/ttyS0
  chroot $R /bin/sh -c "PATH=/usr/sbin:/usr/bin exec makedumpfile -c -d 31 /proc/vmcore /xfer/kdump.tmp" > /xfer/kdump.log 2>&1
  rc=$?
  [ $rc = 0 ] && mv /xfer/kdump.tmp /xfer/vmcore.kdump
  echo "MMRWATCH-CAPTURE rc=$rc" > /dev/ttyS0
  sync
  echo o > /proc/sysrq-trigger
  sleep 30
fi
mkdir -p /xfer/cmd /xfer/out
# The poll loop must not fork while idle (a forked sleep gets a vmalloc'd stack, which
# would change the page tables under a capture): wait with the read builtin on a FIFO.
mkfifo /run-tick; exec 3<>/run-tick
echo "MMRWATCH-READY $(cut -d' ' -f1 /proc/uptime)" > /dev/ttyS0
while true; do
  for f in /xfer/cmd/*.sh; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .sh)
    mv "$f" /xfer/out/$n.run
    ( chroot $R /bin/sh /xfer/out/$n.run > /xfer/out/$n.out 2> /xfer/out/$n.err < /dev/null
      echo $? > /xfer/out/$n.rc.tmp; mv /xfer/out/$n.rc.tmp /xfer/out/$n.rc ) &
  done
  read -t 0.1 -u 3 _ 2>/dev/null
done
"""
_MODULES_FOR = {"debian": DEBIAN_MODULES + ["virtio_pci"]}


def _module_paths(k: Kernel) -> list[str]:
    return _module_paths_for(k, _MODULES_FOR.get(k.name.split("-")[0], []))  # debian-<suite>


def _module_paths_for(k: Kernel, modules: list[str]) -> list[str]:
    """Module files to insmod, dependencies first (``modprobe --show-depends`` order)."""
    if k.modules is None:
        return []
    seen, out = set(), []
    for mod in modules:
        res = subprocess.run(["modprobe", "-d", str(k.modules), "-S", k.release,
                              "--show-depends", mod], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            parts = line.split()
            if parts[:1] == ["insmod"] and parts[1] not in seen:
                seen.add(parts[1])
                out.append(parts[1])
    return out


def build(k: Kernel, shares: dict[str, str]) -> Path:
    """The initramfs for kernel ``k`` with 9p ``shares`` (tag -> guest path), cached."""
    files = {"shares.list": "\n".join(f"{t}={p}" for t, p in shares.items()) + "\n"}
    for f in ("/etc/ld.so.cache", "/etc/passwd", "/etc/group"):
        files[f"etc/{Path(f).name}"] = Path(f).read_bytes()
    return pack(f"{k.name}", k, INIT, _module_paths(k), files)


def pack(name: str, k: Kernel, init: str, mods: list[str],
         files: Optional[dict[str, str | bytes]] = None) -> Path:
    """A busybox initramfs running ``init`` that insmods ``mods`` (in order) from
    /modules.list, plus ``files``; cached under a hash of everything that goes in."""
    files = files or {}
    h = hashlib.sha256((init + repr(mods) + k.release).encode())
    for rel, data in sorted(files.items()):
        h.update(rel.encode() + (data.encode() if isinstance(data, str) else data))
    out = cache_root() / "initramfs" / f"{name}-{h.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for sub in ("bin", "sbin", "proc", "sys", "dev", "etc", "lib/modules"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy("/usr/bin/busybox", root / "bin" / "busybox")
        for applet in subprocess.run(["/usr/bin/busybox", "--list"], capture_output=True,
                                     text=True, check=True).stdout.split():
            if applet != "busybox":
                (root / "bin" / applet).symlink_to("busybox")
        (root / "init").write_text(init)
        (root / "init").chmod(0o755)
        guest_mods = []
        for i, m in enumerate(mods):
            dst = root / "lib" / "modules" / f"{i:02d}-{Path(m).name}"
            shutil.copy(m, dst)
            guest_mods.append(f"/lib/modules/{dst.name}")
        (root / "modules.list").write_text("\n".join(guest_mods) + "\n")
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data.encode() if isinstance(data, str) else data)
        tmp = out.with_suffix(".tmp")
        run(f"cd '{root}' && find . | cpio -o -H newc --quiet | gzip -1 > '{tmp}'")
        os.replace(tmp, out)
    return out
