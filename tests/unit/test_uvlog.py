"""The kernel's own "UV: Map <id>_HI" boot lines (v6.1 map_high()): parsing, trust, and how
they override or extend what hub info says.  Expected values come from the kernel's format
string and the rules, not from mmrwatch's output."""
import drgn
import pytest

from mmrwatch.collectors import printk, uv, uvlog, uvspans
from mmrwatch.collectors.uvlog import LoggedMap

MMR, GRU, MMIOH = 0x3FFF0000000, 0x7FF00000000, 0x6000000000


def test_parse_the_v510_format():
    m = uvlog.parse("UV: Map MMR_HI 0x3fff0000000 - 0x40010000000 UC (8 segments)")
    assert m == LoggedMap("MMR", MMR, 0x40010000000, "UC", 8)
    assert uvlog.parse("UV: Map GRU_HI 0x7ff00000000 - 0x7ff04000000 WB (1 segments)").mode == "WB"
    assert uvlog.parse("UV: Map MMIOH_HI 0x6000000000 - 0x6100000000").segments is None  # pre-5.10


@pytest.mark.parametrize("line", [
    "UV: MMR disabled", "UV: Map MMR_HI base address NULL", "UV: Map MMR_HI 0x10 - 0x10 UC",
    "xUV: Map MMR_HI 0x0 - 0x10 UC (1 segments)", "UV: Map MMR_HI 0x0 - 0x10 UC (1 segments) junk"])
def test_other_lines_are_not_maps(line):
    assert uvlog.parse(line) is None


def test_only_kernel_records_count_and_are_read_once(monkeypatch):
    calls = []

    def read_log(prog):
        calls.append(prog)
        return printk.Log([
            printk.Record("UV: Map MMR_HI 0x3fff0000000 - 0x40000000000 UC (4 segments)", 0),
            printk.Record("UV: Map MMIOH_HI 0x6000000000 - 0x6100000000 UC (4 segments)", 1)])
    monkeypatch.setattr(printk, "read_log", read_log)
    prog = drgn.Program()
    assert set(uvlog.boot_maps(prog)) == {"MMR"}      # /dev/kmsg (facility 1) cannot forge
    uvlog.boot_maps(prog)
    assert len(calls) == 1


def _sysm(blades=2, logged=(), base=MMR):
    return uv.UVSystem(uv.HUBBED, "UV2", 3, [uv.Hub(b, b, b, 3, base, 26) for b in range(blades)],
                       (GRU, GRU + blades * (256 << 20)), True,
                       logged={m.id: m for m in logged})


def _hi(segs, name):
    return [(pa, size, blade) for n, pa, size, blade, _ in segs if n == name]


def test_log_that_agrees_changes_nothing():
    logged = [LoggedMap("MMR", MMR, MMR + (2 << 26), "UC", 2),
              LoggedMap("GRU", GRU, GRU + (2 << 28), "WB", 2)]
    assert uv.segments(_sysm(logged=logged)) == uv.segments(_sysm())
    assert uvspans.log_disagreements(_sysm(logged=logged)) == []


def test_mmr_hi_is_checked_where_the_kernel_addresses_it_and_a_disagreement_is_flagged():
    """global_mmr_base from the BIOS GAM table says one thing, the overlay register the
    kernel mapped from another: the kernel addresses its MMRs through hub info, so that
    span is checked, and the note says both."""
    real = 0x1FFF0000000
    s = _sysm(logged=[LoggedMap("MMR", real, real + (2 << 26), "UC", 2)])
    assert _hi(uv.segments(s), "MMR_HI") == [(MMR, 1 << 26, 0), (MMR + (1 << 26), 1 << 26, 1)]
    (note,) = uvspans.log_disagreements(s)
    assert note.startswith("MMR_HI disagreement") and "0x3fff0000000-0x3fff8000000" in note \
        and "0x1fff0000000-0x1fff8000000" in note


def test_mmr_hi_without_the_boot_line_says_it_came_from_hub_info():
    (note,) = uvspans.log_disagreements(_sysm())
    assert note.startswith("MMR_HI from hub info") and "boot line is not in the log" in note


def test_mmioh_from_the_log_is_checked_uncached():
    s = _sysm(logged=[LoggedMap("MMIOH", MMIOH, MMIOH + (1 << 32), "UC", 2)])
    (seg,) = [t for t in uv.segments(s) if t[0] == "MMIOH_HI"]
    assert seg == ("MMIOH_HI", MMIOH, 1 << 32, None, uv.UC_ONLY)
