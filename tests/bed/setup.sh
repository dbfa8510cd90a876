#!/usr/bin/env bash
# Shared setup for ./demo and tests/run on a fresh Debian 12 machine: system packages
# (when root), the project venv in .venv, and the test-bed kernels (cached under
# ~/.cache/mmrwatch; each UV-enabled kernel is built once).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
say() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

PKGS="python3 python3-venv python3-pip qemu-system-x86 ovmf busybox-static cpio zstd xz-utils
      kmod makedumpfile kexec-tools linux-source-6.1 build-essential bc bison flex libssl-dev
      libelf-dev dwarves rsync systemd openssl debootstrap openssh-client qemu-utils e2fsprogs"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "${missing// /}" ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing system packages: $missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    say "missing system packages (run as root, or: sudo apt-get install $missing)"
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
# editable: the tests, the demo and the guests (which see this repo at the same path) run
# the working tree, never a copy installed before the last edit
say "installing mmrwatch into .venv (editable)"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,web]'

if [ -n "${MMRWATCH_DEFER_UV:-}" ]; then
  exit 0          # the caller provisions: tests/run (the UV builds beside downloads and
                  # tests), ./demo (the UV build beside the stock-kernel part)
fi
say "provisioning test artefacts (cached in ${MMRWATCH_CACHE:-$HOME/.cache/mmrwatch})"
.venv/bin/python -m tests.bed.kernels all
