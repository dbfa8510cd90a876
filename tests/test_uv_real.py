"""UV personalities on a real UV-enabled kernel (issue 4): hub state injected into the
running guest, then checked on a dump of it, and the 2016 regression also live inside the
guest on its /proc/kcore, on each UV kernel (6.1 and 6.12: ``uvk``).  Multi-blade
personalities, and every fault at once in a dump, live
and in a real kdump, are in test_uv_blades.py.

Expected findings are written from the kernel's rules (x2apic_uv_x.c, efi_64.c): MMRs in init_mm at
page_offset_base + phys, 2 MiB, UC; efi_mm sees them through the kernel half it copies
from init_mm at every EFI call; a runtime-MMIO MMR is also mapped 1:1 in efi_mm.
"""
import json

import pytest

from mmrwatch.collectors import efi

from tests.bed import uvinject as U
from tests.conftest import mmrwatch, report_live, report_on_dump as _report

pytestmark = [pytest.mark.realkernel, pytest.mark.uvkernel]
LOCAL = (0xFA000000, 32 << 20)
REAL_MMR, MMIOH = 0x1FFF0000000, 0x6000000000     # overlay-register MMR_HI base; UV2 MMIOH


def _st(doc, name, mm, rule="direct"):
    for r in doc["ranges"]:
        if r["name"] == name:
            for e in r["expectations"]:
                if e["mm"] == mm and e["rule"] == rule:
                    return e["status"], e["severity"]
    return None


def test_uv_scenarios_on_a_running_kernel(bed, uvk):
    seen = {}

    def scenarios(guest, b):
        pob = {}

        # 1. hub state + init_mm mappings, efi_mm not yet synced: MMR_HI/GRU_HI live in a
        #    new top-level slot (4-level: 512 GiB per slot) -> stale window, a warning.
        def stale(gm):
            pob["v"] = gm.facts.page_offset_base
            U.make_uv(gm, U.Personality("UV4"), map_init=False)
            init = gm.root("init_mm")
            for pa, size, fl in ((*LOCAL, U.LEAF_UC), (0x3FFF0000000, 64 << 20, U.LEAF_UC),
                                 (0x7FF00000000, 64 << 20, U.LEAF_WB)):
                gm.map_2m(init, pob["v"] + pa, pa, size, fl)
        # dumped in the same pause: any EFI call would re-sync efi_mm and end the window
        U.inject(guest, stale, resume=False)
        seen["stale"] = _report(guest, b, "stale")
        # ... and live: nothing in this guest makes EFI runtime calls, so the window stays
        # open; the live check confirms it with a second walk and still calls it a warning
        seen["stale-live"] = report_live(guest, b)
        # 2. the next EFI call copies the kernel half: healthy
        U.inject(guest, lambda gm: gm.sync_kernel_half())
        def ptdump_uv(dump):
            seen["ptdump"] = mmrwatch("ptdump", "--vmcore", str(dump), "--vmlinux",
                                      str(b.kernel.vmlinux), "--uv", check_rc=0).stdout
        seen["healthy"] = _report(guest, b, "healthy", ptdump_uv)
        # 3. a write-back LOCAL_MMR
        U.inject(guest, lambda gm: gm.map_2m(gm.root("init_mm"), pob["v"] + LOCAL[0], *LOCAL,
                                             U.LEAF_WB))
        seen["wb"] = _report(guest, b, "wb")
        # 4. the 2016 regression: firmware lists LOCAL_MMR as runtime MMIO, EFI maps it 1:1,
        #    the kernel's direct map lacks it
        def regression(gm):
            gm.unmap_2m(gm.root("init_mm"), pob["v"] + LOCAL[0], LOCAL[1])
            gm.map_2m(gm.root("efi_mm"), LOCAL[0], *LOCAL, U.EFI_UCMINUS)
            gm.add_runtime_mmio(*LOCAL)
            # ... and UVsystab as a real UV kernel holds it: uv_systab an ioremap()ped VA
            # (the HPET's, the one VM_IOREMAP area this guest keeps: not in a dump, zeros
            # through /proc/kcore), uv_systab_phys in firmware runtime data
            data = [d for d in efi.read_memmap(gm.prog)
                    if d.type_name == "RuntimeServicesData" and d.runtime][0]
            seen["systab"] = data.phys + 0x100
            gm.set_var("uv_systab", gm.prog["hpet_virt_address"].value_())
            gm.set_var("uv_systab_phys", seen["systab"])
        U.inject(guest, regression)
        seen["2016"] = _report(guest, b, "2016")
        seen["live"] = report_live(guest, b)
        # 5. init_mm's MMR_HI slot replaced since the last EFI call (efi_mm still holds the
        #    old table: a diverged slot), left in place for the real kdump that ends this
        #    boot: the crash path makes no EFI call
        U.inject(guest, lambda gm: gm.reopen_stale_window(pob["v"] + 0x3FFF0000000))

    b = bed.boot(f"{uvk}-inject-kdump", keep=scenarios)
    res = mmrwatch("report", "--vmcore", str(b.real_kdump), "--vmlinux", str(b.kernel.vmlinux),
                   "--format", "json")
    seen["kdump"] = (json.loads(res.stdout), res.returncode)

    doc, rc = seen["stale"]
    assert doc["uv"] == {"state": "hubbed", "hub": "UV4", "revision": 7, "blades": 1,
                         "min_pnode": 0, "max_pnode": 0}
    assert _st(doc, "MMR_HI", "init_mm") == ("ok", "ok")
    assert _st(doc, "MMR_HI", "efi_mm") == ("stale", "warning")
    assert _st(doc, "LOCAL_MMR", "efi_mm") == ("ok", "ok")    # low MMRs share an old slot
    assert rc == 1 and doc["verdict"] == "warning"
    doc, rc = seen["stale-live"]
    assert isinstance(doc, dict), doc
    assert doc["target"]["live"] and rc == 1 and doc["verdict"] == "warning"
    assert _st(doc, "MMR_HI", "efi_mm") == ("stale", "warning")
    assert _st(doc, "MMR_HI", "init_mm") == ("ok", "ok")

    doc, rc = seen["healthy"]
    assert rc == 0 and doc["verdict"] in ("ok", "info")
    for name in ("LOCAL_MMR", "MMR_HI", "GRU_HI"):
        assert _st(doc, name, "init_mm") == _st(doc, name, "efi_mm") == ("ok", "ok")
    assert "GLOBAL_MMR32" not in {r["name"] for r in doc["ranges"]}   # UV4 on v5.10+

    tail = seen["ptdump"].split("---[ mmrwatch: ")[1].splitlines()
    assert tail[0] == "hubbed UV4 (revision 7), 1 blade(s), pnodes 0-0 ]---"
    assert [ln.split()[1] for ln in tail[1:]] == ["LOCAL_MMR", "MMR_HI[pnode", "GRU_HI[pnode"]
    assert all(" ok " in ln for ln in tail[1:])

    doc, rc = seen["wb"]
    assert _st(doc, "LOCAL_MMR", "init_mm") == ("wrong-cache", "critical") and rc == 2

    for doc, rc in (seen["2016"], seen["live"]):
        assert isinstance(doc, dict), doc
        assert rc == 2 and doc["verdict"] == "critical"
        assert doc["uv"]["hub"] == "UV4"
        assert _st(doc, "LOCAL_MMR", "init_mm") == ("missing", "critical")
        assert _st(doc, "LOCAL_MMR", "efi_mm", "identity") == ("ok", "ok")
        problems = [(r["name"], e["mm"], e["rule"]) for r in doc["ranges"]
                    for e in r["expectations"] if e["severity"] in ("warning", "critical")]
        # the kernel half is shared, so efi_mm's direct-map view lacks it too: two findings
        assert sorted(problems) == [("LOCAL_MMR", "efi_mm", "direct"), ("LOCAL_MMR", "init_mm", "direct")]
    assert seen["live"][0]["target"]["live"] is True
    # UVsystab: unreadable in a dump (firmware memory); live, read as zeros through
    # /proc/kcore and said so, and the page holding it checked in efi_mm instead
    assert any(n.startswith("UVsystab is not readable") for n in seen["2016"][0]["notes"])
    doc = seen["live"][0]
    assert any(n.startswith("UVsystab cannot be read through /proc/kcore") and
               f"uv_systab_phys 0x{seen['systab']:x}" in n for n in doc["notes"]), doc["notes"]
    (tab,) = [r for r in doc["ranges"] if r["name"] == "UV_SYSTAB"]
    assert tab["attrs"]["efi_region"] == "RuntimeServicesData"
    assert [(e["mm"], e["rule"], e["status"]) for e in tab["expectations"]][0] == \
        ("efi_mm", "identity", "ok")
    assert all(e["status"] == "ok" for e in tab["expectations"])

    # the real kdump: the 2016 failure and, for MMR_HI, a slot init_mm replaced since the
    # last EFI call while efi_mm still holds the old table: "diverged", not the empty-slot
    # stale window (issue 14), a warning (the next EFI call copies init_mm's entry)
    doc, rc = seen["kdump"]
    assert doc["target"]["format"] == "kdump" and doc["crash"]["crashed"]
    assert _st(doc, "MMR_HI", "init_mm") == ("ok", "ok")
    assert _st(doc, "MMR_HI", "efi_mm") == ("diverged", "warning")
    assert _st(doc, "LOCAL_MMR", "init_mm") == ("missing", "critical")
    assert _st(doc, "LOCAL_MMR", "efi_mm", "identity") == ("ok", "ok")
    assert _st(doc, "GRU_HI", "efi_mm") == ("ok", "ok")      # its own slot, still shared
    assert rc == 2


def test_more_personalities_and_failures_on_one_running_kernel(bed, uvk):
    """UV5 healthy, then on top of it: the reverse failure (runtime-listed MMR absent from
    efi_mm's 1:1 map), a 2 MiB hole inside MMR_HI, and a hubless system.  Each state is
    dumped in the same pause that wrote it."""
    seen = {}

    def scenarios(guest, b):
        def step(tag, fn):
            U.inject(guest, fn, resume=False)
            seen[tag] = _report(guest, b, tag)

        step("uv5", lambda gm: U.make_uv(gm, U.Personality("UV5")))
        step("reverse", lambda gm: gm.add_runtime_mmio(*LOCAL))

        def hole(gm):
            gm.unmap_2m(gm.root("init_mm"), gm.facts.page_offset_base + 0x3FFF0000000 + (4 << 20),
                        2 << 20)
        step("hole", hole)
        step("hubless", lambda gm: gm.set_var("uv_hubless_system", 1))
        seen["hubless-live"] = report_live(guest, b)

        def boot_log(gm):
            """A UV2 whose hub info (BIOS GAM table) disagrees with the MMR overlay register
            the kernel mapped MMR_HI from, and which maps MMIOH: known only from the
            kernel's boot messages, written into its printk ring as map_high() logs them."""
            gm.set_var("uv_hubless_system", 0)
            gm.map_2m(gm.root("efi_mm"), LOCAL[0], *LOCAL, U.EFI_UCMINUS)   # repair "reverse"
            U.make_uv(gm, U.Personality("UV2"))
            pob, init = gm.facts.page_offset_base, gm.root("init_mm")
            gm.unmap_2m(init, pob + 0x3FFF0000000, 64 << 20)
            for pa, size in ((REAL_MMR, 64 << 20), (MMIOH, 256 << 20)):
                gm.map_2m(init, pob + pa, pa, size, U.LEAF_UC)
            gm.sync_kernel_half()
            gm.printk(f"UV: Map MMR_HI 0x{REAL_MMR:x} - 0x{REAL_MMR + (64 << 20):x} UC (1 segments)")
            gm.printk("UV: Map GRU_HI 0x7ff00000000 - 0x7ff10000000 WB (1 segments)")
            gm.printk(f"UV: Map MMIOH_HI 0x{MMIOH:x} - 0x{MMIOH + (256 << 20):x} UC (4 segments)")
            # mmrwatch's targeted scan of the text ring finds what drgn's full reader finds
            from drgn.helpers.linux.printk import get_printk_records
            from mmrwatch.collectors import printk
            seen["lines"] = (printk._scan_text_ring(gm.prog, b"UV: Map "),
                             [r.text.decode() for r in get_printk_records(gm.prog)
                              if r.facility == 0 and r.text.startswith(b"UV: Map ")])
        step("bootlog", boot_log)
        # the guest keeps logging after the injected records (its ring stayed consistent)
        guest.run("echo mmrwatch-after-injection > /dev/kmsg")
        _, so, _ = guest.run("dmesg | grep -e 'UV: Map' -e mmrwatch-after-injection")
        seen["dmesg"] = so

    bed.boot(f"{uvk}-inject", keep=scenarios)
    doc, rc = seen["uv5"]
    # UV5: revision base 9, MMR_HI segment 32 MiB (shift 25), GRU 32 MiB, no GLOBAL_MMR32
    assert doc["uv"] == {"state": "hubbed", "hub": "UV5", "revision": 9, "blades": 1,
                         "min_pnode": 0, "max_pnode": 0}
    sizes = {r["name"]: r["size"] for r in doc["ranges"] if r["source"] == "uv"}
    assert sizes == {"LOCAL_MMR": 32 << 20, "MMR_HI": 32 << 20, "GRU_HI": 32 << 20}
    assert rc == 0, doc["verdict_text"]

    doc, rc = seen["reverse"]
    assert rc == 2
    assert _st(doc, "LOCAL_MMR", "init_mm") == ("ok", "ok")
    assert _st(doc, "LOCAL_MMR", "efi_mm") == ("ok", "ok")                 # shared half
    assert _st(doc, "LOCAL_MMR", "efi_mm", "identity") == ("missing", "critical")

    doc, rc = seen["hole"]
    (mmr,) = [r for r in doc["ranges"] if r["name"] == "MMR_HI"]
    for e in mmr["expectations"]:
        if e["rule"] == "direct":
            assert (e["status"], e["severity"], e["missing_bytes"]) == ("partial", "critical",
                                                                        2 << 20), e
            assert e["mapped_bytes"] == (30 << 20)

    for tag in ("hubless", "hubless-live"):
        doc, rc = seen[tag]
        assert isinstance(doc, dict), doc
        assert doc["uv"] == {"state": "hubless"}
        assert not [r for r in doc["ranges"] if r["source"] == "uv"]
    assert seen["hubless-live"][0]["target"]["live"] is True

    doc, rc = seen["bootlog"]
    # MMR_HI is checked where the kernel addresses it (hub info), which the kernel did not
    # map (it mapped the overlay register's span): critical, and the disagreement noted
    spans = sorted((r["name"], int(r["phys_start"], 16), r["size"]) for r in doc["ranges"]
                   if r["source"] == "uv")
    assert spans == [("GLOBAL_MMR32", 0xFC000000, 32 << 20), ("GRU_HI", 0x7FF00000000, 256 << 20),
                     ("LOCAL_MMR", 0xFA000000, 32 << 20), ("MMIOH_HI", MMIOH, 256 << 20),
                     ("MMR_HI", 0x3FFF0000000, 64 << 20)]
    for r in doc["ranges"]:
        if r["source"] == "uv":
            for e in r["expectations"]:
                want = ("missing", "critical") if r["name"] == "MMR_HI" else ("ok", "ok")
                assert (e["status"], e["severity"]) == want, (r["name"], e)
    assert rc == 2, doc["verdict_text"]
    assert any(n.startswith("MMR_HI disagreement") and "0x3fff0000000-0x3fff4000000" in n
               and "kernel logged mapping 0x1fff0000000-0x1fff4000000" in n
               for n in doc["notes"]), doc["notes"]
    assert not any(n.startswith("MMIOH ranges are recorded only") for n in doc["notes"])
    assert "UV: Map MMIOH_HI" in seen["dmesg"] and "mmrwatch-after-injection" in seen["dmesg"]
    scanned, full = seen["lines"]
    assert scanned == full and len(full) == 3, seen["lines"]
