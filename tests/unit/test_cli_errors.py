"""Bad inputs: one line on stderr, a documented exit code, never a traceback."""
import struct
import subprocess
import sys

import pytest

from mmrwatch.agent import cli


def run(*args):
    res = subprocess.run([sys.executable, "-m", "mmrwatch", *args], capture_output=True, text=True)
    assert "Traceback" not in res.stderr
    return res


def _write(path, data):
    path.write_bytes(data)
    return path


def _elf_core(path, phdr_filesz=4096, note=False):
    """A tiny ELF64 ET_CORE with one PT_LOAD claiming ``phdr_filesz`` bytes at offset 0x1000."""
    eh = bytearray(64)
    eh[:4] = b"\x7fELF"
    eh[4], eh[5], eh[6] = 2, 1, 1
    struct.pack_into("<HHIQQQIHHHHHH", eh, 16, 4, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 4, 0x1000, 0xffff888000000000, 0, phdr_filesz,
                     phdr_filesz, 4096)
    data = bytes(eh) + ph
    path.write_bytes(data.ljust(0x1000, b"\0") + bytes(4096))
    return path


@pytest.mark.parametrize("make,code,text", [
    (lambda p: _write(p, b"hello" * 100), cli.EXIT_DATA, "not a kernel dump"),
    (lambda p: _write(p, b""), cli.EXIT_DATA, "not a kernel dump"),
    (lambda p: _write(p, b"makedumpfile\0" + bytes(100)), cli.EXIT_DATA, "makedumpfile -R"),
    (lambda p: _elf_core(p, phdr_filesz=1 << 20), cli.EXIT_DATA, "truncated"),
    (lambda p: _elf_core(p), cli.EXIT_DATA, "not of a Linux kernel"),
    (lambda p: p, cli.EXIT_NOINPUT, "no such file"),
])
def test_bad_dumps(tmp_path, make, code, text):
    dump = make(tmp_path / "vmcore")
    res = run("report", "--vmcore", str(dump))
    assert res.returncode == code, res.stderr
    assert text in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert res.stdout == ""


def test_usage_errors_are_64():
    for args in ([], ["report"], ["report", "--vmcore", "x", "--live"], ["bogus"],
                 ["ptdump", "--vmcore", "x", "--mm", "user"]):
        res = run(*args)
        assert res.returncode == cli.EXIT_USAGE, (args, res.stderr)


def test_bad_ranges_file_is_refused_before_the_dump_is_opened(tmp_path):
    bad = tmp_path / "r.toml"
    bad.write_text("[[range]]\nname='x'\n")
    res = run("report", "--vmcore", "/nonexistent", "--ranges", str(bad))
    assert res.returncode == cli.EXIT_DATA and "missing field 'start'" in res.stderr


def test_help_documents_exit_codes():
    res = run("report", "--help")
    assert res.returncode == 0
    for code in ("64", "65", "66", "69", "70", "77"):
        assert f"\n  {code}" in res.stdout


def test_missing_ranges_file_is_66(tmp_path):
    res = run("report", "--vmcore", "/nonexistent", "--ranges", str(tmp_path / "none.toml"))
    assert res.returncode == cli.EXIT_NOINPUT and "cannot read" in res.stderr


@pytest.mark.parametrize("args,code,text", [
    (["--web.listen-address", "nohost"], cli.EXIT_USAGE, "bad listen address"),
    (["--interval", "0"], cli.EXIT_USAGE, "must be positive"),
    (["--textfile", "/nonexistent/dir/m.prom"], cli.EXIT_OSERR, "no such directory"),
    (["--textfile", "/tmp/m.txt"], cli.EXIT_OSERR, "ending in .prom"),
    (["--web.config.file", "/nonexistent.yml"], cli.EXIT_CONFIG, "no such file"),
    (["--ranges", "/nonexistent.toml"], cli.EXIT_CONFIG, "cannot read"),
    (["--per-range", "some"], cli.EXIT_USAGE, "invalid choice"),
])
def test_serve_startup_errors_are_one_line(args, code, text):
    res = subprocess.run([sys.executable, "-m", "mmrwatch", "serve", "--vmcore", "/nonexistent",
                          "--web.listen-address", "127.0.0.1:0", *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == code, res.stderr
    assert text in res.stderr and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("Try ")]
    assert len(lines) == 1, res.stderr


def test_serve_port_in_use_is_71():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run("serve", "--vmcore", "/nonexistent", "--web.listen-address", f"127.0.0.1:{port}")
    assert res.returncode == cli.EXIT_OSERR and "cannot listen" in res.stderr


@pytest.mark.parametrize("args", [["check", "--bogus"], ["check", "--timeout", "x"],
                                  ["check", "--vmcore", "/nonexistent"],
                                  ["check", "--live"]])
def test_nagios_check_unknown_is_3_on_stdout(args):
    res = run(*args)
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert res.stdout.startswith("MMRWATCH UNKNOWN - ") and len(res.stdout.splitlines()) == 1


def test_cli_habits_no_command_unknown_option_first_and_the_subcommands_help():
    """`mmrwatch` alone lists the commands; an unknown option is named before a missing
    --vmcore/--live would be; the hint names the subcommand's own --help, which has
    examples."""
    import subprocess
    import sys
    run = lambda *a: subprocess.run([sys.executable, "-m", "mmrwatch", *a],
                                    capture_output=True, text=True)
    none = run()
    assert none.returncode == cli.EXIT_USAGE and "{report,ptdump,where,serve,check}" in none.stderr
    bad = run("report", "--bogus")
    assert bad.returncode == cli.EXIT_USAGE
    assert bad.stderr.splitlines() == ["mmrwatch report: unknown option --bogus",
                                       "Try 'mmrwatch report --help'."]
    assert "examples:" in run("report", "--help").stdout
    assert "examples:" in run("serve", "--help").stdout
