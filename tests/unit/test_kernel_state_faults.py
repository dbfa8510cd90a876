"""Regressions for the bug classes the fuzz harness found (tests/fuzz/README.md, B1-B10):
corrupt kernel state ends one branch (a note and an "unreadable" finding or field) or the
target (a documented exit), never the report.  Each test makes the one corruption of a
healthy synthetic kernel (``tests.fuzz.kernels.base_kernel``) that reproduced the class and
runs what the CLI runs; the expectations come from the rules, not from mmrwatch's output."""
from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import drgn
import jsonschema
import pytest

from mmrwatch.agent import cli
from mmrwatch.collectors import faults, printk
from mmrwatch.collectors.errors import TargetError
from mmrwatch.collectors.target import open_vmcore
from tests.fuzz import gen_tables, synthdump
from tests.fuzz.kernels import base_kernel
from tests.synth import report_schema

SCHEMA = report_schema()


def _edit(k, name: str, member, fmt: str, value: int):
    k.edits.append(lambda k, prog, t, objs: gen_tables._set(objs, prog, name, member, fmt, value))
    return k


def _run(target, *argv: str) -> tuple[int, str]:
    """One embedded CLI command on an open target: (exit status, stdout)."""
    ns = cli.build_parser(embedded=True).parse_args(list(argv))
    ns.target = target
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = {"report": cli.cmd_report, "ptdump": cli.cmd_ptdump}[argv[0]](ns)
    return rc, out.getvalue()


def _report(k) -> tuple[int, dict]:
    rc, out = _run(gen_tables.target_of(k), "report", "--format", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)           # B9/B10: every report the schema's
    return rc, doc


def _state(doc: dict, name: str) -> dict:
    (r,) = [r for r in doc["ranges"] if r["name"] == name]
    assert r["kind"] == "unreadable" and r["size"] == 0
    (e,) = r["expectations"]
    assert e["status"] == "unreadable" and e["severity"] == "warning"
    return e


def _checked(doc: dict, name: str) -> bool:
    return any(r["name"] == name and r["expectations"] for r in doc["ranges"])


# -- what counts as a kernel fault ------------------------------------------------------
def test_kernel_faults_are_drgns_and_data_bugs_are_not():
    prog = drgn.Program(drgn.host_platform)
    s = prog.struct_type("s", 8, (drgn.TypeMember(prog.int_type("int", 4, True), "a", 0),))
    obj = drgn.Object(prog, s, value={"a": 1})
    raised = []
    for f in (lambda: obj.b, lambda: int(obj), lambda: obj[0], lambda: obj.member_("b"),
              lambda: prog.type("struct nosuch"), lambda: 1 << (1 << 62)):
        try:
            f()
        except Exception as e:                 # noqa: BLE001
            raised.append(e)
    assert len(raised) == 6 and all(faults.is_kernel_fault(e) for e in raised), raised
    bugs = []
    nothing = None
    for f in (lambda: nothing.x, lambda: {}["k"], lambda: [][1], lambda: nothing[0],
              lambda: 1 + "a", lambda: bytes(nothing)):
        try:
            f()
        except Exception as e:                 # noqa: BLE001
            bugs.append(e)
    assert len(bugs) == 6 and not any(faults.is_kernel_fault(e) for e in bugs), bugs


def test_a_bug_in_a_source_is_not_turned_into_health(monkeypatch):
    from mmrwatch.collectors import engine, uv

    def bug(prog):
        return None.hubs                       # an AttributeError of mmrwatch's own
    monkeypatch.setattr(uv, "discover", bug)
    with pytest.raises(AttributeError):
        engine.run_check(gen_tables.target_of(base_kernel()), [engine.uv_source])


# -- B1: crash forensics ----------------------------------------------------------------
def test_b1_unreadable_cpu_state_is_a_note_not_exit_70():
    k = _edit(base_kernel(uv=False), "__per_cpu_offset", 8, "<Q", 0)   # CPU 1's runqueue
    rc, doc = _report(k)
    assert rc in (0, 1, 2)
    c = doc["crash"]
    (cpu1,) = [x for x in c["cpus"] if x["cpu"] == 1]
    assert cpu1["mm"] == cpu1["task"] == "(unreadable)" and cpu1["crashed"]
    assert any(n.startswith("CPU 1: state unreadable (FaultError") for n in c["notes"])
    assert [x for x in c["cpus"] if x["cpu"] == 0 and x["mm"] != "(unreadable)"]


def test_b1_garbage_nr_cpu_ids_reads_the_mask_not_gigabytes():
    k = _edit(base_kernel(uv=False), "nr_cpu_ids", "", "<I", 0xFFFFFFFF)
    t0 = time.monotonic()
    rc, doc = _report(k)
    assert time.monotonic() - t0 < 5
    assert [x["cpu"] for x in doc["crash"]["cpus"]] == [0, 1]       # the mask's bits
    assert any("nr_cpu_ids 0xffffffff is no CPU count" in n for n in doc["crash"]["notes"])


# -- B2: UV hub info and GRU bounds -----------------------------------------------------
def test_b2_huge_global_mmr_shift_is_one_finding_and_the_rest_is_checked():
    k = base_kernel()
    k.uv_state["mmr_shift"] = 1 << 40
    rc, doc = _report(k)
    e = _state(doc, "uv-MMR_HI")
    assert "global_mmr_shift 1099511627776" in e["message"]
    assert _checked(doc, "LOCAL_MMR") and _checked(doc, "GRU_HI")
    # the boot line's MMR_HI (valid) is checked instead of hub info's
    assert _checked(doc, "MMR_HI")


def test_b2_gru_past_52_bits_is_one_finding():
    k = base_kernel()
    k.uv_state["gru"] = (0x7FF00000000, 1 << 60)
    rc, doc = _report(k)
    assert "past 52-bit physical addresses" in _state(doc, "uv-GRU_HI")["message"]
    assert not _checked(doc, "GRU_HI") and _checked(doc, "LOCAL_MMR")


@pytest.mark.parametrize("pnode,hub", [(16384, "UV3"), (40000, "UV3")])
def test_b2_pnode_beyond_uv_hardware_is_one_finding(pnode, hub):
    k = base_kernel(pnodes=(0, pnode))
    rc, doc = _report(k)
    assert "pnodes < 16384" in _state(doc, "uv-hub-pnodes")["message"]
    assert doc["uv"]["max_pnode"] == 0 and doc["uv"]["hub"] == hub
    assert len([r for r in doc["ranges"] if r["name"] == "GRU_HI"]) == 1


def test_b2_pnode_0xffff_is_no_pnode_as_in_the_kernel():
    rc, doc = _report(base_kernel(pnodes=(0, 0xFFFF)))
    assert doc["uv"]["blades"] == 1 and doc["uv"]["max_pnode"] == 0
    assert not [r for r in doc["ranges"] if r["kind"] == "unreadable"]


def test_b2_garbage_nr_node_ids_is_one_finding_not_a_read_of_ram():
    k = _edit(base_kernel(ram_mib=64), "nr_node_ids", "", "<I", (1 << 31) - 1)
    t0 = time.monotonic()
    rc, doc = _report(k)
    assert time.monotonic() - t0 < 5
    assert "nr_node_ids 0x7fffffff is no node count" in _state(doc, "uv-hub-list")["message"]
    assert _checked(doc, "LOCAL_MMR")


# -- B3: efi.memmap header --------------------------------------------------------------
@pytest.mark.parametrize("member,fmt,value,says", [
    ("memmap.desc_size", "<Q", 1 << 62, "desc_size"), ("memmap.desc_size", "<Q", 1 << 40,
                                                       "desc_size"),
    ("memmap.desc_size", "<Q", 8, "desc_size"), ("memmap.nr_map", "<i", 1 << 20, "nr_map")])
def test_b3_garbage_memmap_header_is_one_finding(member, fmt, value, says):
    k = _edit(base_kernel(uv=False), "efi", member, fmt, value)
    rc, doc = _report(k)
    e = _state(doc, "efi-memmap-state")
    assert says in e["message"]
    assert any("EFI memory map is not readable" in n for n in doc["notes"])
    assert not [r for r in doc["ranges"] if r["source"] == "efi-memmap" and r["size"]]


# -- B4: the printk log -----------------------------------------------------------------
def test_b4_log_next_idx_never_reached_is_no_hang():
    k = _edit(base_kernel(), "log_next_idx", "", "<I", 1)
    t0 = time.monotonic()
    rc, doc = _report(k)
    assert time.monotonic() - t0 < 5
    assert rc in (0, 1, 2)
    assert any(n.startswith("kernel log: read up to a corrupt record") for n in
               doc["crash"]["notes"])


def test_b4_the_bounded_reader_reads_a_wrapped_log():
    k = base_kernel()
    prog = k.program()
    lines = [r.text for r in printk.read_log(prog).records]
    assert lines == [text for _, text in k.log] and not printk.read_log(prog).problem


def _ring(count_bits: int, tail: int, head: int):
    from types import SimpleNamespace as NS

    def counter(v):
        return NS(counter=NS(value_=lambda: v))
    return NS(desc_ring=NS(count_bits=count_bits, tail_id=counter(tail), head_id=counter(head)))


@pytest.mark.parametrize("count_bits,tail,head,says", [
    (40, 0, 1, "count_bits 40"),                            # 2^40 descriptors
    (5, 0, 32, "spans more ids than its 32 descriptors"),   # tail..head is 33 records
    (5, 7, 6, "spans more ids"),                            # head behind tail: 2^62 - 1 ids
])
def test_b4_a_lockless_ring_is_walked_only_when_tail_to_head_fits(count_bits, tail, head, says):
    with pytest.raises(ValueError, match=says):
        printk._lockless(drgn.Program(), _ring(count_bits, tail, head))


# -- B5, B6, B7: debug info and symbols from a corrupt dump ----------------------------
def _bundle(tmp_path: Path, k, stem: str):
    return synthdump.write_bundle(k, tmp_path, stem)


def _open(core: Path, blob: Path, smap: Path):
    from mmrwatch.collectors.debuginfo import Request
    return open_vmcore(str(core), req=Request("btf", None, str(blob), str(smap)))


def test_b5_garbage_kallsyms_table_is_exit_65(tmp_path):
    (tmp_path / "b5.elf").write_bytes(synthdump.garbage_kallsyms(base_kernel(uv=False)))
    with pytest.raises(TargetError) as e:
        open_vmcore(str(tmp_path / "b5.elf"))
    assert e.value.kind == "data" and str(e.value).startswith("kallsyms in memory unreadable")


def test_b6_btf_without_a_member_is_the_uv_state_unreadable(tmp_path):
    core, blob, smap = _bundle(tmp_path, base_kernel(), "b6")
    blob.write_bytes(blob.read_bytes().replace(b"numa_blade_id\0", b"numa_blade_iX\0"))
    rc, out = _run(_open(core, blob, smap), "report", "--format", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    assert "has no member 'numa_blade_id'" in _state(doc, "uv-state")["message"]
    assert doc["uv"]["state"] == "unreadable"
    assert any(r["source"] == "efi-memmap" and r["size"] for r in doc["ranges"])


def test_b7_page_offset_base_at_an_unreadable_address_is_exit_65_or_found(tmp_path):
    core, blob, smap = _bundle(tmp_path, base_kernel(uv=False), "b7")
    lines = [("0000000000000000 D page_offset_base" if ln.endswith(" page_offset_base") else ln)
             for ln in smap.read_text().splitlines()]
    smap.write_text("\n".join(lines) + "\n")
    t = _open(core, blob, smap)
    try:
        rc, out = _run(t, "report", "--format", "json")
    except TargetError as e:                   # drgn could not find the direct map either
        assert e.kind == "data" and "page_offset_base" in str(e)
    else:                                      # drgn found it: the report is the same
        assert json.loads(out)["kernel"]["page_offset_base"] == "0xffff888000000000"


def test_b7_efi_mm_at_an_unreadable_address_is_an_unreadable_space(tmp_path):
    core, blob, smap = _bundle(tmp_path, base_kernel(uv=False), "b7e")
    lines = [("0000000000001000 D efi_mm" if ln.endswith(" efi_mm") else ln)
             for ln in smap.read_text().splitlines()]
    smap.write_text("\n".join(lines) + "\n")
    rc, out = _run(_open(core, blob, smap), "report", "--format", "json")
    doc = json.loads(out)
    jsonschema.validate(doc, SCHEMA)
    s = doc["address_spaces"]["efi_mm"]
    assert s["state"] == "no-table" and s["reason"].startswith("efi_mm unreadable: FaultError")
    efi = [e for r in doc["ranges"] for e in r["expectations"] if e["mm"] == "efi_mm"]
    assert efi and all(e["status"] == "unreadable" and e["severity"] == "warning" for e in efi)
    assert rc == 1


# -- B8, B9, B10 ------------------------------------------------------------------------
def test_b8_ptdump_uv_with_unreadable_uv_state():
    k = _edit(base_kernel(), "__uv_hub_info_list", "", "<Q", 0xFFFF888000000000 + (1 << 40))
    rc, out = _run(gen_tables.target_of(k), "ptdump", "--mm", "kernel", "--uv")
    assert rc == 0
    assert "---[ mmrwatch: UV state unreadable (FaultError: " in out


def test_b9_a_cache_table_entry_that_is_no_mode_is_broken_and_noted():
    k = base_kernel(uv=False)
    k.cachemode_tbl = [7, 1, 2, 3, 0, 5, 2, 4]     # PAT index 0 (WB bits) -> 7
    rc, doc = _report(k)                            # validates against the schema
    modes = {m for r in doc["ranges"] for e in r["expectations"] for m in e["cache_modes"]}
    assert "broken" in modes
    assert any(n.startswith("__pte2cachemode_tbl[0] holds 7, which is no page_cache_mode")
               for n in doc["notes"])


def test_b10_an_unreadable_source_validates_with_size_0():
    k = _edit(base_kernel(), "__uv_hub_info_list", "", "<Q", 0xFFFF888000000000 + (1 << 40))
    rc, doc = _report(k)                            # validates against the schema
    assert "uv state unreadable: FaultError" in _state(doc, "uv-state")["message"]
    bad = json.loads(json.dumps(doc))
    (r,) = [r for r in bad["ranges"] if r["kind"] == "unreadable"]
    r["kind"] = "MMIO"                              # size 0 only for kernel state
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
