"""Hostile inputs (issue 15): every bad dump, path or ranges file is one printable line with
a documented exit code, promptly; never a traceback, a hang or unbounded reading."""
import os
import struct
import subprocess
import sys

import pytest

from mmrwatch.agent import cli
from mmrwatch.collectors import kernel, userranges
from mmrwatch.collectors.errors import DATA, NOINPUT
from mmrwatch.collectors.target import TargetError, _sniff, one_line, open_target
from mmrwatch.collectors.userranges import RangesError
from tests.synth import SynthKernel


def run(*args, timeout=60):
    res = subprocess.run([sys.executable, "-m", "mmrwatch", *args], capture_output=True,
                         text=True, timeout=timeout)
    assert "Traceback" not in res.stderr
    return res


def one_error_line(res, code, text):
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0] and lines[0].isprintable(), res.stderr
    assert res.stdout == ""


class _Vmci(SynthKernel):
    """A synthetic kernel whose VMCOREINFO note is rewritten by ``edit``."""

    def __init__(self, edit, **kw):
        super().__init__(ram_mib=4, **kw)
        self._edit = edit

    def vmcoreinfo(self) -> bytes:
        return self._edit(super().vmcoreinfo())


@pytest.fixture(scope="module")
def good_vmcore(tmp_path_factory):
    path = tmp_path_factory.mktemp("dump") / "vmcore"
    SynthKernel(ram_mib=4).write_vmcore(str(path))
    return path


def _patched(src, dst, off, fmt, val):
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, off, val)
    dst.write_bytes(data)
    return dst


# -- item 2: the ELF sniffer checks every header value against the file -------------------
@pytest.mark.parametrize("off,fmt,val,text", [
    (0x20, "<Q", 1 << 40, "program headers cut off"),          # e_phoff beyond the file
    (0x20, "<Q", 1 << 63, "program headers cut off"),          # e_phoff >= 2^63
    (0x20, "<Q", (1 << 64) - 1, "program headers cut off"),
    (0x36, "<H", 8, "program header size 8"),                  # e_phentsize < 56
    (0x36, "<H", 0, "program header size 0"),
    (0x36, "<I", 0xFFFE_FFFF, "program headers cut off"),      # phnum * phentsize: 4 GiB
    (0x04, "<B", 7, "unknown class"),
])
def test_corrupt_elf_header_is_data_error(good_vmcore, tmp_path, off, fmt, val, text):
    bad = _patched(good_vmcore, tmp_path / "vmcore", off, fmt, val)
    with pytest.raises(TargetError) as e:
        _sniff(str(bad))
    assert e.value.kind == DATA and text in str(e.value) and "\n" not in str(e.value)
    one_error_line(run("report", "--vmcore", str(bad)), cli.EXIT_DATA, text)


def test_extended_phnum_is_read_from_section_header_zero(good_vmcore, tmp_path):
    """PN_XNUM (more than 65534 segments): the count is section header 0's sh_info."""
    data = bytearray(good_vmcore.read_bytes())
    shoff = len(data)
    data += struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 2, 0, 0)   # sh_info = 2
    struct.pack_into("<Q", data, 0x28, shoff)
    struct.pack_into("<HHH", data, 0x38, 0xFFFF, 64, 1)
    (tmp_path / "vmcore").write_bytes(data)
    assert _sniff(str(tmp_path / "vmcore")) == "elf"
    struct.pack_into("<I", data, shoff + 44, 1 << 20)               # far more than the file
    (tmp_path / "vmcore").write_bytes(data)
    with pytest.raises(TargetError, match="cut off"):
        _sniff(str(tmp_path / "vmcore"))


# -- item 1: drgn's own errors on a bad dump ------------------------------------------------
@pytest.mark.parametrize("edit,text", [
    (lambda v: v.replace(b"PAGESIZE=4096", b"PAGESIZE=zz"), "number in VMCOREINFO is invalid"),
    (lambda v: v.replace(b"PAGESIZE=4096", b"PAGESIZE=3"), "PAGESIZE"),
    (lambda v: v.replace(b"OSRELEASE=6.1.0-synthetic", b"OSRELEASE=" + b"a" * 200), "OSRELEASE"),
    (lambda v: v + b"BUILD-ID=zz\n", "BUILD-ID"),
    (lambda v: v.replace(b"KERNELOFFSET=0", b"KERNELOFFSET=zz"), "invalid"),
])
def test_bad_vmcoreinfo_is_data_error(tmp_path, edit, text):
    dump = tmp_path / "vmcore"
    _Vmci(edit).write_vmcore(str(dump))
    res = run("report", "--vmcore", str(dump))
    one_error_line(res, cli.EXIT_DATA, "cannot read as a kernel dump")
    assert text in res.stderr


def test_libelf_error_is_data_error(good_vmcore, tmp_path):
    """e_shoff pointing at nothing: libelf's plain Exception ("invalid ELF file data")."""
    bad = _patched(good_vmcore, tmp_path / "vmcore", 0x28, "<B", 0xFF)
    res = run("report", "--vmcore", str(bad))
    one_error_line(res, cli.EXIT_DATA, "libelf error")


def test_one_line_escapes_control_characters():
    assert one_line("6.1\x1b[31m\nx\udcff\x00") == "6.1\\x1b[31m\\nx\\udcff\\x00"
    assert one_line("ok text") == "ok text"
    long = one_line("a" * 1000, 50)
    assert len(long) == 50 and long.endswith("...")


def test_path_with_control_characters_is_escaped(tmp_path):
    res = run("report", "--vmcore", str(tmp_path / "x\n\x1b[2Jy"))
    one_error_line(res, cli.EXIT_NOINPUT, "\\n\\x1b[2Jy: no such file")


# -- item 3: every way opening fails has a kind ---------------------------------------------
def test_open_failures_are_mapped(good_vmcore, tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    cases = [(f"{good_vmcore}/", NOINPUT, "not a directory"),
             (str(loop), NOINPUT, "symbolic links"),
             (str(tmp_path / ("n" * 300)), NOINPUT, "name too long"),
             ("/proc/self/mem", DATA, "cannot read"),
             (str(tmp_path), NOINPUT, "is a directory")]
    for path, kind, text in cases:
        with pytest.raises(TargetError) as e:
            _sniff(path)
        assert (e.value.kind, text in str(e.value)) == (kind, True), (path, str(e.value))
        code = cli.EXIT_NOINPUT if kind == NOINPUT else cli.EXIT_DATA
        one_error_line(run("report", "--vmcore", path), code, text)


# -- item 4: FIFOs and devices neither block nor stream ---------------------------------------
def test_fifo_and_device_dumps_are_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, what in ((str(fifo), "FIFO"), ("/dev/zero", "character device")):
        one_error_line(run("report", "--vmcore", path, timeout=20), cli.EXIT_DATA,
                       f"not a regular file (a {what})")


def test_fifo_device_and_huge_ranges_files_are_refused(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * userranges.MAX_BYTES + "\n")
    for path, text in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file"),
                       (big, "too large")):
        res = run("report", "--vmcore", "/nonexistent", "--ranges", str(path), timeout=20)
        one_error_line(res, cli.EXIT_DATA, text)
    with pytest.raises(RangesError) as e:
        userranges.load(tmp_path / "nodir.toml" / "x")
    assert e.value.kind == NOINPUT            # exit 66, as a missing dump


# -- item 10: an empty --vmcore is not --live ------------------------------------------------
def test_empty_vmcore_is_not_live():
    with pytest.raises(TargetError) as e:
        open_target("")
    assert (e.value.kind, str(e.value)) == (NOINPUT, "--vmcore: empty path")
    one_error_line(run("report", "--vmcore", ""), cli.EXIT_NOINPUT, "--vmcore: empty path")


# -- item 8: hostile ranges files ---------------------------------------------------------------
_OK = 'name="a"\nstart=0x1000\nsize=4096\n'


@pytest.mark.parametrize("text,msg", [
    ("range = [1]\n", "range 1: not a table"),
    ('range = ["name"]\n', "range 1: not a table"),
    ("x = " + "[" * 2000 + "]" * 2000 + "\n", "nested too deeply"),
    ("[[range]]\n" + _OK + "cache = []\n", "empty list allows no mode"),
    ("[[range]]\n" + _OK + "cache = {}\n", "cache must be"),
    ("[[range]]\n" + _OK + "cache = [1]\n", "cache modes are strings"),
    ("[[range]]\n" + _OK + "va = []\n", "non-empty list of rules"),
    ("[[range]]\n" + _OK + "va = {}\n", "empty table names no mm"),
    ("[[range]]\n" + _OK + "va = {init_mm = []}\n", "non-empty list of rules"),
    ("[[range]]\n" + _OK + "va = {init_mm = 5}\n", "non-empty list of rules"),
    ("[[range]]\n" + _OK + 'mms = ["kernel"]\nva = {efi_mm = "identity"}\n', "but mms lists"),
    ("[[range]]\n" + _OK + "mms = [[1]]\n", "mms must list"),
    ("[[range]]\n" + 'name="a"\nstart=0x1000\nsize=[' + "[1]," * 50 + "]\n", "not a size"),
    ("[[range]]\n" + 'name.' + "a." * 3000 + 'b=1\nstart=0\nsize=4096\n', "name must be"),
    ("[[range]]\n" + 'name="a"\nstart="' + "9" * 5000 + '"\nsize=4096\n', "not an integer"),
    ("x = " + "9" * 5000 + "\n", "not valid TOML"),
    ('[[range]]\nname="a"\nstart=0\nsize="4097TiB"\n', "below 4 PiB"),
])
def test_hostile_ranges_files_are_one_line(tmp_path, text, msg):
    f = tmp_path / "r.toml"
    f.write_text(text)
    with pytest.raises(RangesError) as e:
        userranges.load(f)
    s = str(e.value)
    assert msg in s and s.isprintable() and len(s) <= 400, s


def test_hostile_ranges_file_through_the_cli(tmp_path):
    f = tmp_path / "r.toml"
    f.write_text("range = [1]\n")
    one_error_line(run("report", "--vmcore", "/nonexistent", "--ranges", str(f)), cli.EXIT_DATA,
                   "not a table")


# -- item 7: VA ranges x86-64 cannot have --------------------------------------------------------
@pytest.mark.parametrize("levels,start,size,va,ok", [
    (4, 0, "4096TiB", "direct", False),            # the direct VA passes 2^64
    (4, 0, "4096TiB", "identity", False),          # 1:1 crosses the non-canonical hole
    (5, 0, "4096TiB", "identity", True),           # 5-level: 2^52 < 2^56
    (4, 0x7FFFFFFFF000, "8KiB", "identity", False),  # crosses 2^47
    (4, 0x7FFFFFFFE000, "8KiB", "identity", True),
    (4, 0xFA000000, "32MiB", "direct", True),
])
def test_range_va_must_be_canonical(levels, start, size, va, ok):
    k = SynthKernel(levels=levels, ram_mib=4)
    facts = kernel.read_facts(k.program())
    spec = userranges._spec({"name": "r", "start": start, "size": size, "va": va})
    spec["where"] = "r.toml: range 1 ('r')"
    if ok:
        (r,) = userranges.to_ranges([spec], facts, lambda pa: None)
        assert all(e.va + r.size <= 1 << 64 for e in r.expectations)
    else:
        with pytest.raises(RangesError) as e:
            userranges.to_ranges([spec], facts, lambda pa: None)
        assert "x86-64 cannot map it" in str(e.value) and "range 1" in str(e.value)
