"""Test-bed housekeeping that needs no kernel."""
import os

from tests.bed.qemu import reclaim_stale_ram


def test_reclaims_only_ram_files_of_dead_processes(tmp_path):
    dead = 2 ** 22 + 12345          # above pid_max's default: never a live process
    mine = tmp_path / f"mmrwatch-{os.getpid()}-0.ram"
    stale = tmp_path / f"mmrwatch-{dead}-3.ram"
    other = tmp_path / "unrelated.ram"
    for f in (mine, stale, other):
        f.write_bytes(b"x")
    assert reclaim_stale_ram(tmp_path) == [stale]
    assert mine.exists() and other.exists() and not stale.exists()
