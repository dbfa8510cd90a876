"""Multi-blade UV personalities on a real UV-enabled kernel with 8 NUMA nodes (issue 4).

One boot (``numa=fake=8``, 5-level paging) serves every test here: healthy personalities of
each hub type with 1, 2 and 8 blades, each dumped in the pause that wrote it; then one state
with a fault in every range (``uvinject.many_faults``, plus a UV BIOS entry on an NX page), checked on a dump of the running
guest, live inside the guest on its /proc/kcore, and in a real kdump of the crashed guest.

Expected findings are written from the kernel's rules (v6.1
``uv_system_init_hub``/``map_mmr_high``/``map_gru_high``): MMR_HI is ``1 << shift`` bytes
per pnode (shift 25 on UV5, else 26), GRU_HI ``1 << gshift`` per pnode (25 UV5, 26 UV4/UV4A,
28 UV2/UV3), GLOBAL_MMR32 only on UV2/UV3 from v5.10, all in init_mm at page_offset_base +
phys and seen by efi_mm through the kernel half it copies.
"""
import json

import pytest

from tests.bed import uvinject as U
from tests.conftest import mmrwatch, report_live, report_on_dump

pytestmark = [pytest.mark.realkernel, pytest.mark.uvkernel]
MMR_HI, GRU = 0x3FFF0000000, 0x7FF00000000
# hub -> (revision, MMR_HI bytes per blade, GRU_HI bytes per blade, has GLOBAL_MMR32)
RULES = {"UV2": (3, 64 << 20, 256 << 20, True), "UV3": (5, 64 << 20, 256 << 20, True),
         "UV4": (7, 64 << 20, 64 << 20, False), "UV4A": (8, 64 << 20, 64 << 20, False),
         "UV5": (9, 32 << 20, 32 << 20, False)}
HEALTHY = [(hub, blades) for hub in RULES for blades in (1, 2, 8)]
EFI_WINDOW = (0xFFFFFFEF00000000, 0xFFFFFFFF00000000)     # [EFI_VA_END, EFI_VA_START)


def _efi_pages(ptdump: str) -> dict[str, int]:
    """First executable and first NX page in the EFI VA window, from the kernel's own
    /sys/kernel/debug/page_tables/efi (independent of mmrwatch's walker)."""
    out: dict[str, int] = {}
    for line in ptdump.splitlines():
        if not line.startswith("0x"):
            continue
        start = int(line.split("-")[0], 16)
        words = line.split()
        if EFI_WINDOW[0] <= start < EFI_WINDOW[1] and words[-2] in ("x", "NX"):
            out.setdefault(words[-2], start)
    return out


@pytest.fixture(scope="module")
def numa(bed, uvk):
    seen = {}

    def scenarios(guest, b):
        _, so, _ = guest.run("ls -d /sys/devices/system/node/node*")
        seen["nodes"] = len(so.split())
        _, so, _ = guest.run("cat /sys/kernel/debug/page_tables/efi")
        seen["efi_pages"] = pages = _efi_pages(so)
        # UV BIOS entry on an executable page of the firmware's runtime code
        U.inject(guest, lambda gm: gm.set_bios_entry(pages["x"] + 0x10))
        for hub, blades in HEALTHY:
            U.inject(guest, lambda gm: U.make_uv(gm, U.Personality(hub, blades)), resume=False)
            seen[(hub, blades)] = report_on_dump(guest, b, f"{hub}x{blades}")
        # a UV5 whose two hubs sit on pnodes 1 and 3: four segments, two of them no blade's
        U.inject(guest, lambda gm: U.make_uv(gm, U.Personality("UV5", 2, pnodes=(1, 3))),
                 resume=False)
        seen["sparse"] = report_on_dump(guest, b, "UV5-sparse")

        def faults(gm):
            seen["faults"] = U.many_faults(gm)
            gm.set_bios_entry(pages["NX"] + 0x10)       # ... and a BIOS entry on an NX page
            seen["pool"] = guest._uv_pool
            seen["log_buf"] = (gm.facts.kernel_pa(gm.prog["log_buf"].value_()),
                               int(gm.prog["log_buf_len"]))
        U.inject(guest, faults, resume=False)
        seen["dump"] = report_on_dump(guest, b, "faults")
        seen["live"] = report_live(guest, b)

    seen["boot"] = bed.boot(f"{uvk}-numa", keep=scenarios)
    return seen


def _uv(doc):
    return [r for r in doc["ranges"] if r["source"] == "uv"]


def _blade(r):
    return -1 if r["blade"] is None else r["blade"]


def _layout(doc):
    """(name, blade or -1, physical start, size) of every UV MMR/GRU range, sorted."""
    return sorted((r["name"], _blade(r), int(r["phys_start"], 16), r["size"]) for r in _uv(doc)
                  if r["name"] != "UV_BIOS_ENTRY")


def _entry(doc):
    """(function, [(mm, rule, status)]) of the UV BIOS entry range."""
    (r,) = [r for r in _uv(doc) if r["name"] == "UV_BIOS_ENTRY"]
    return int(r["attrs"]["function"], 16), [(e["mm"], e["rule"], e["status"])
                                             for e in r["expectations"]]


def _expected_layout(hub, blades):
    _, mseg, gseg, g32 = RULES[hub]
    out = [("LOCAL_MMR", -1, 0xFA000000, 32 << 20)]
    if g32:
        out.append(("GLOBAL_MMR32", -1, 0xFC000000, 32 << 20))
    out += [("MMR_HI", b, MMR_HI + b * mseg, mseg) for b in range(blades)]
    out += [("GRU_HI", b, GRU + b * gseg, gseg) for b in range(blades)]
    return sorted(out)


def _problems(doc):
    """(name, blade, mm, rule, status, missing bytes) of every warning or critical finding;
    EFI memory-map ranges by type (their index depends on the firmware's map)."""
    return sorted((r["name"] if r["source"] != "efi-memmap" else f"efi-{r['kind']}",
                   _blade(r), e["mm"], e["rule"],
                   e["status"], e["missing_bytes"])
                  for r in doc["ranges"] for e in r["expectations"]
                  if e["severity"] in ("warning", "critical"))


def test_guest_has_eight_nodes(numa):
    assert numa["nodes"] == 8


@pytest.mark.parametrize("hub,blades", HEALTHY)
def test_healthy_multi_blade_personality(numa, hub, blades):
    doc, rc = numa[(hub, blades)]
    assert doc["uv"] == {"state": "hubbed", "hub": hub, "revision": RULES[hub][0],
                         "blades": blades, "min_pnode": 0, "max_pnode": blades - 1}
    assert _layout(doc) == _expected_layout(hub, blades)
    assert _entry(doc) == (numa["efi_pages"]["x"] + 0x10, [("efi_mm", "efi_va", "ok")])
    for r in _uv(doc):
        for e in r["expectations"]:
            assert (e["status"], e["severity"]) == ("ok", "ok"), (r["name"], r["blade"], e)
    assert rc == 0, doc["verdict_text"]


def _expected_fault_problems():
    """From the rules: every fault shows in init_mm and, through the shared kernel half,
    in efi_mm's direct-map view; the runtime-MMIO ones in efi_mm's 1:1 map."""
    mseg = RULES["UV3"][1]
    out = [("LOCAL_MMR", -1, mm, "direct", "missing", 32 << 20) for mm in ("init_mm", "efi_mm")]
    out.append(("GLOBAL_MMR32", -1, "efi_mm", "identity", "missing", 32 << 20))
    # ... which the EFI memory-map source sees too: a runtime descriptor not mapped 1:1
    out.append(("efi-MMIO", -1, "efi_mm", "identity", "missing", 32 << 20))
    out += [("MMR_HI", 5, mm, "direct", "missing", mseg) for mm in ("init_mm", "efi_mm")]
    out += [("MMR_HI", 2, mm, "direct", "partial", 2 << 20) for mm in ("init_mm", "efi_mm")]
    out += [("GRU_HI", 6, mm, "direct", "wrong-cache", 0) for mm in ("init_mm", "efi_mm")]
    out.append(("UV_BIOS_ENTRY", -1, "efi_mm", "efi_va", "wrong-perm", 0))   # NX entry page
    return sorted(out)


def _check_faults(doc, rc, pages):
    assert isinstance(doc, dict), doc
    assert _entry(doc) == (pages["NX"] + 0x10, [("efi_mm", "efi_va", "wrong-perm")])
    assert doc["uv"] == {"state": "hubbed", "hub": "UV3", "revision": 5, "blades": 8,
                         "min_pnode": 0, "max_pnode": 7}
    assert _layout(doc) == _expected_layout("UV3", 8)
    assert _problems(doc) == _expected_fault_problems()
    # the 2016 regression's other half: EFI does have it, 1:1
    (local,) = [r for r in _uv(doc) if r["name"] == "LOCAL_MMR"]
    assert [(e["rule"], e["status"]) for e in local["expectations"] if e["mm"] == "efi_mm"
            and e["rule"] == "identity"] == [("identity", "ok")]
    assert rc == 2 and doc["verdict"] == "critical"


def test_faults_on_a_dump_of_the_running_kernel(numa):
    _check_faults(*numa["dump"], numa["efi_pages"])


def test_faults_live_inside_the_guest(numa):
    doc, rc = numa["live"]
    _check_faults(doc, rc, numa["efi_pages"])
    assert doc["target"]["live"] is True


def test_faults_in_a_real_kdump(numa):
    """The capture kernel's makedumpfile output (-d 31) still holds the injected hub state
    (it lives in the tail of the big printk buffer) and tells the same story."""
    b = numa["boot"]
    base, size = numa["log_buf"]
    assert base + size // 2 < numa["pool"] <= base + size       # the pool was the log tail
    res = mmrwatch("report", "--vmcore", str(b.real_kdump), "--vmlinux", str(b.kernel.vmlinux),
                   "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["target"]["format"] == "kdump"
    _check_faults(doc, res.returncode, numa["efi_pages"])
    assert doc["crash"]["crashed"] and doc["crash"]["panic_message"] == "sysrq triggered crash"


def test_segments_are_labelled_by_pnode_and_blade_only_where_a_hub_is(numa):
    """Hubs on pnodes 1 and 3: map_high() maps pnodes 0-3, so MMR_HI/GRU_HI have four
    segments each, and only pnodes 1 and 3 are blades (0 and 1, their numa_blade_id)."""
    doc, rc = numa["sparse"]
    assert rc == 0, doc
    assert doc["uv"]["blades"] == 2 and doc["uv"]["max_pnode"] == 3
    for name, seg in (("MMR_HI", 32 << 20), ("GRU_HI", 32 << 20)):
        segs = sorted((r["pnode"], r["blade"], int(r["phys_start"], 16)) for r in _uv(doc)
                      if r["name"] == name)
        base = MMR_HI if name == "MMR_HI" else GRU
        assert segs == [(0, None, base), (1, 0, base + seg), (2, None, base + 2 * seg),
                        (3, 1, base + 3 * seg)], segs

