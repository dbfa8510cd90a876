"""A real Debian 12 system for deployment tests: systemd as PID 1, sshd, on a virtio disk.

``rootfs_image()`` debootstraps bookworm once (cached, keyed by this recipe), configures
systemd-networkd (DHCP), sshd with a generated key, and packs it into an ext4 image.
``SystemGuest`` boots the cached Debian kernel on a copy-on-write overlay of that image under
QEMU + OVMF, with a tiny initramfs that loads the disk/network modules and switch_roots
into ``/sbin/init``; the kernel's vmlinux is shared read-only at ``/mnt/kernel`` so mmrwatch
inside can read ``/proc/kcore``.  SSH is forwarded to a 127.0.0.1 port.  ``shares`` adds
host directories, mounted read-only (9p) at the guest paths given once SSH is up.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional

from .cache import log, provide, run
from .initramfs import _module_paths_for, pack
from .kernels import Kernel
from .qemu import OVMF_CODE, OVMF_VARS, TCG_CMDLINE

PACKAGES = ["systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "python3",
            "python3-venv", "iproute2", "ca-certificates"]
MIRROR = "http://deb.debian.org/debian"
NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n"
RECIPE = repr((PACKAGES, MIRROR, NETWORK, "recipe-2"))
MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "virtio_net", "9p", "9pnet_virtio"]

INIT = r"""#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod "$m" 2>/dev/null; done
mkdir -p /newroot
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 /dev/vda /newroot || { echo "MMRWATCH-ROOT-FAILED"; sleep 30; poweroff -f; }
mkdir -p /newroot/mnt/kernel
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 kernel /newroot/mnt/kernel
umount /proc /sys; mount --move /dev /newroot/dev 2>/dev/null
exec switch_root /newroot /sbin/init
"""


def _build_rootfs(out: Path) -> None:
    t0 = time.monotonic()
    root = out / "root"
    run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm",
         str(root), MIRROR], capture_output=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(out / "id_ed25519")])
    (root / "etc/hostname").write_text("mmrwatch-fleet\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 mmrwatch-fleet\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
    (root / "etc/systemd/network/20-dhcp.network").write_text(NETWORK)
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy(out / "id_ed25519.pub", ssh / "authorized_keys")
    (ssh / "authorized_keys").chmod(0o600)
    (root / "etc/ssh/sshd_config.d/mmrwatch.conf").write_text(
        "PermitRootLogin prohibit-password\nUseDNS no\n")
    run(["chroot", str(root), "systemctl", "enable", "systemd-networkd", "ssh"],
        capture_output=True)
    run(["chroot", str(root), "passwd", "-d", "root"], capture_output=True)
    for p in (root / "var/cache/apt/archives").glob("*.deb"):
        p.unlink()
    run(["mkfs.ext4", "-q", "-L", "root", "-d", str(root), str(out / "root.img"), "3G"],
        capture_output=True)
    shutil.rmtree(root)
    log(f"Debian 12 root filesystem built in {time.monotonic() - t0:.0f} s")


def rootfs() -> Path:
    """Directory with ``root.img`` (ext4, 3 GiB sparse) and the SSH key ``id_ed25519``."""
    key = hashlib.sha256(RECIPE.encode()).hexdigest()[:12]
    return provide(f"rootfs/bookworm-{key}", _build_rootfs)


def disk_initramfs(k: Kernel) -> Path:
    """Load the disk, filesystem and network modules, mount /dev/vda, switch_root."""
    return pack(f"disk-{k.name}", k, INIT, _module_paths_for(k, MODULES))


class SystemGuest:
    """Debian 12 with systemd, reachable over SSH on 127.0.0.1:``ssh_port``."""

    def __init__(self, kernel: Kernel, workdir: Path, forwards: dict[int, int],
                 mem_mib: int = 1536, shares: Optional[dict[str, tuple[Path, str]]] = None
                 ) -> None:
        self.kernel, self.dir, self.forwards, self.mem = kernel, workdir, forwards, mem_mib
        self.shares = shares or {}          # 9p tag -> (host directory, guest mount point)
        self.dir.mkdir(parents=True, exist_ok=True)
        from .boots import free_port
        self.ssh_port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.key = rootfs() / "id_ed25519"

    def __enter__(self) -> "SystemGuest":
        img = rootfs() / "root.img"
        overlay = self.dir / "overlay.qcow2"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(img),
             str(overlay)])
        vars_copy = self.dir / "OVMF_VARS.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}"
                      for h, g in {self.ssh_port: 22, **self.forwards}.items())
        cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max,la57=off",
               "-smp", "2", "-m", f"{self.mem}M",
               "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
               "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
               "-kernel", str(self.kernel.bzimage), "-initrd", str(disk_initramfs(self.kernel)),
               "-append", f"console=ttyS0 root=/dev/vda rw panic=-1 systemd.show_status=0 "
                          f"{TCG_CMDLINE}",
               "-drive", f"file={overlay},if=virtio,format=qcow2",
               "-netdev", f"user,id=n0{fwd}", "-device", "virtio-net-pci,netdev=n0",
               "-virtfs", f"local,path={self.kernel.vmlinux.parent},mount_tag=kernel,security_model=none,"
                          "readonly=on",
               *[a for tag, (path, _) in self.shares.items() for a in (
                   "-virtfs", f"local,path={path},mount_tag={tag},security_model=none,"
                              "readonly=on")],
               "-display", "none", "-monitor", "none", "-serial",
               f"file:{self.dir / 'console.log'}", "-no-reboot"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.dir / "qemu.out", "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._await_ssh()
        except BaseException:    # `with` never reaches __exit__ for an __enter__ that raised:
            self.__exit__()      # no QEMU may outlive a failed boot, Ctrl-C or SIGTERM
            raise
        return self

    def _await_ssh(self) -> None:
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("QEMU exited: " + (self.dir / "qemu.out").read_text()[-2000:])
            if self.ssh("true", check=False, timeout=20).returncode == 0:
                break
            if time.monotonic() - t0 > 600:
                raise TimeoutError("no SSH after 600 s: " + self.console_tail())
            time.sleep(2)
        log(f"Debian 12 + systemd guest up (SSH) in {time.monotonic() - t0:.0f} s")
        for tag, (_, mnt) in self.shares.items():
            self.ssh(f"mkdir -p {mnt} && mount -t 9p -o trans=virtio,version=9p2000.L,ro,"
                     f"msize=512000 {tag} {mnt}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()

    def console_tail(self, n: int = 3000) -> str:
        p = self.dir / "console.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""

    def ssh_args(self) -> list[str]:
        return ["-i", str(self.key), "-p", str(self.ssh_port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "ConnectTimeout=10", "-o", "BatchMode=yes"]

    def ssh(self, command: str, check: bool = True, timeout: float = 600
            ) -> subprocess.CompletedProcess:
        res = subprocess.run(["ssh", *self.ssh_args(), "root@127.0.0.1", command],
                             capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise RuntimeError(f"guest: {command!r} failed ({res.returncode}): {res.stderr}")
        return res
