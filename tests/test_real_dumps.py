"""The engine on real dumps of real kernels booted with real firmware (issues 2 and 3).

Expectations come from how x86 maps EFI runtime regions and from what the guest itself
reported (/sys/firmware/efi, runtime-map), not from mmrwatch's own output.
"""
import json

import pytest

from tests.bed.boots import UV_KERNELS
from tests.conftest import live_view, mmrwatch, report_both, report_live

pytestmark = pytest.mark.realkernel
OVMF_FLASH = 0xFFC00000


def report(dump, vmlinux, *extra):
    """The JSON report, identical with DWARF and with BTF + kallsyms (returns BTF's)."""
    doc, rc = report_both(["--vmcore", str(dump), *extra], vmlinux)
    assert rc in (0, 1, 2), doc
    return doc, rc


def runtime_entries(b) -> int:
    return sum(int(a, 16) >> 63 for a in b.facts["runtime_attrs"].split())


def flash(doc):
    (r,) = [r for r in doc["ranges"] if r["phys_start"] == hex(OVMF_FLASH)]
    return {(e["mm"], e["rule"]): e for e in r["expectations"]}


@pytest.mark.parametrize("name,levels", [("debian-l5", 5), ("debian-l4-efidebug", 4)] +
                         [(f"{k}-{s}", n) for k in UV_KERNELS for s, n in (("l5", 5),
                                                                          ("l4-efidebug", 4))])
def test_efi_runtime_audit_on_real_firmware(bed, name, levels):
    """OVMF's flash MMIO is mapped in efi_mm 1:1 and at its EFI VA, absent from init_mm."""
    b = bed.boot(name)
    doc, rc = report(b.elf, b.kernel.vmlinux)
    assert rc == 0 and doc["verdict"] in ("ok", "info")
    assert doc["kernel"]["paging_levels"] == levels
    assert doc["kernel"]["release"] == b.facts["release"]
    assert doc["address_spaces"]["efi_mm"]["state"] == "table"
    # every entry the guest's sysfs runtime-map lists with EFI_MEMORY_RUNTIME is checked
    assert len(doc["ranges"]) == runtime_entries(b)
    f = flash(doc)
    assert f[("efi_mm", "identity")]["status"] == "ok"
    assert f[("efi_mm", "identity")]["cache_modes"] == ["UC-"]     # no EFI_MEMORY_WB: PCD
    assert f[("efi_mm", "efi_va")]["status"] == "ok"
    assert f[("init_mm", "direct")]["status"] == "missing"
    assert f[("init_mm", "direct")]["severity"] == "info"


def test_efi_debug_keeps_whole_map_but_only_runtime_is_checked(bed):
    b = bed.boot("debian-l4-efidebug")
    assert "efi=debug" in b.facts["cmdline"]
    from mmrwatch.collectors import efi, target
    t = target.open_vmcore(str(b.elf), str(b.kernel.vmlinux))
    descs = efi.read_memmap(t.prog)
    assert len(descs) == int(b.facts["runtime_map"]) > 3 * runtime_entries(b)  # whole map
    assert sum(d.runtime for d in descs) == runtime_entries(b)


def test_kdump_compressed_dump_gives_the_same_findings(bed):
    b = bed.boot("debian-l5")
    elf, _ = report(b.elf, b.kernel.vmlinux)
    kd, _ = report(b.kdump, b.kernel.vmlinux)
    assert kd["target"]["format"] == "kdump"
    strip = lambda d: [(r["name"], [(e["mm"], e["rule"], e["status"], e["mapped_bytes"])
                                    for e in r["expectations"]]) for r in d["ranges"]]
    assert strip(elf) == strip(kd)


@pytest.mark.parametrize("name,reason", [
    ("debian-noruntime", "runtime services disabled"),
    ("debian-seabios", "not booted through EFI"),
    *[(f"{k}-{s}", why) for k in UV_KERNELS for s, why in (
        ("noruntime", "runtime services disabled"), ("seabios", "not booted through EFI"))],
])
def test_efi_mm_without_table_is_a_clear_state(bed, name, reason):
    b = bed.boot(name)
    doc, rc = report(b.elf, b.kernel.vmlinux)
    assert rc == 0, doc
    mm = doc["address_spaces"]["efi_mm"]
    assert mm["state"] == "no-table" and reason in mm["reason"]
    res = mmrwatch("ptdump", "--vmcore", str(b.elf), "--vmlinux", str(b.kernel.vmlinux),
                   "--mm", "efi", check_rc=0)
    assert reason in res.stderr and res.stdout == ""
    if name.endswith("seabios"):
        assert b.facts["efi"] == "no"


def test_text_report_verdict_first(bed):
    b = bed.boot("debian-l5")
    res = mmrwatch("report", "--vmcore", str(b.elf), "--vmlinux", str(b.kernel.vmlinux),
                   check_rc=0)
    lines = res.stdout.splitlines()
    assert lines[2].startswith("VERDICT  OK")
    assert "efi-MMIO" in res.stdout and "not mapped in init_mm" in res.stdout


@pytest.mark.uvkernel        # another kernel's debug info: the UV build's
def test_wrong_vmlinux_is_refused(bed):
    b = bed.boot("debian-l5")
    uv = bed.kernel("uv")
    res = mmrwatch("report", "--vmcore", str(b.elf), "--vmlinux", str(uv.vmlinux), check_rc=69)
    assert "does not match" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_ranges_file_on_real_dump(bed, tmp_path):
    """A configured range (the flash) expected in the direct map: init_mm lacks it."""
    b = bed.boot("debian-l5")
    f = tmp_path / "r.toml"
    f.write_text(f'[[range]]\nname = "flash"\nstart = {OVMF_FLASH:#x}\nsize = "4MiB"\n'
                 'mms = ["init_mm", "efi_mm"]\nva = { init_mm = "direct", efi_mm = ["identity", "efi_va"] }\n'
                 'cache = "uncached"\n')
    doc, rc = report(b.elf, b.kernel.vmlinux, "--ranges", str(f))
    assert rc == 2 and doc["verdict"] == "critical"
    (r,) = [r for r in doc["ranges"] if r["name"] == "flash"]
    st = {(e["mm"], e["rule"]): e["status"] for e in r["expectations"]}
    assert st == {("init_mm", "direct"): "missing", ("efi_mm", "identity"): "ok",
                  ("efi_mm", "efi_va"): "ok"}


@pytest.mark.parametrize("name,state", [("debian-l5", "not-uv-kernel")] +
                         [(f"{k}-l5", "uv-kernel-non-uv-hardware") for k in UV_KERNELS])
def test_uv_state_of_real_kernels(bed, name, state):
    """Debian's kernel has no CONFIG_X86_UV; the UV build on QEMU finds no UV hub."""
    b = bed.boot(name)
    doc, rc = report(b.elf, b.kernel.vmlinux)
    assert doc["uv"]["state"] == state
    assert not [r for r in doc["ranges"] if r["source"] == "uv"]   # no false alarms
    assert rc == 0


def test_progress_only_on_a_terminal_and_never_on_stdout(bed):
    import os
    import pty
    import subprocess
    import sys
    b = bed.boot("debian-l5")
    cmd = [sys.executable, "-m", "mmrwatch", "report", "--vmcore", str(b.elf), "--vmlinux",
           str(b.kernel.vmlinux), "--format", "json"]
    master, slave = pty.openpty()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=slave, timeout=300)
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(master)
    assert b"walking efi_mm and init_mm" in err
    json.loads(p.stdout)                          # stdout is the report and nothing else
    quiet = subprocess.run(cmd, capture_output=True, timeout=300)
    assert quiet.stderr == b"" and json.loads(quiet.stdout) == json.loads(p.stdout) | {
        "stats": json.loads(quiet.stdout)["stats"]}


def test_kernel_before_6_0_without_dwarf_needs_its_system_map(bed):
    """Debian 11's 5.10: no kallsyms in VMCOREINFO, so a dump needs --system-map (from the
    -dbg package; the image package's is a placeholder); BTF comes from the dump itself.
    With its own System.map the report equals the DWARF one; another kernel's map is
    refused, and so is the placeholder."""
    live = {}

    def in_guest(guest, res):        # live before 6.0: symbols from /proc/kallsyms (root)
        live["doc"], live["rc"] = report_live(guest, res)
        # ... or from the copy the unit's kallsyms drop-in takes before the daemon starts
        import json
        import sys
        rc, out, err = guest.run("cat /proc/kallsyms > /tmp/ks && MMRWATCH_SYSTEM_MAP=/tmp/ks "
                                 f"{sys.executable} -m mmrwatch report --live --debug-info btf "
                                 "--format json", timeout=900, check=False)
        live["copy"] = (json.loads(out) if out.strip() else err, rc)
    b = bed.boot("bullseye-l4", keep=in_guest)
    k = b.kernel
    assert k.release.startswith("5.10.")
    assert live["rc"] == 0, live["doc"]
    assert live["doc"]["target"]["debug_info"]["symbols"] == "proc-kallsyms"
    assert live["doc"]["target"]["debug_info"]["types_path"] == "/sys/kernel/btf/vmlinux"
    copy, rc = live["copy"]
    assert rc == 0, copy
    assert copy["target"]["debug_info"]["symbols"] == "system-map"
    assert live_view(copy) == live_view(live["doc"])
    doc, rc = report_both(["--vmcore", str(b.elf)], k.vmlinux,
                          btf_args=("--system-map", str(k.system_map)))
    assert rc == 0 and doc["target"]["debug_info"]["symbols"] == "system-map"
    assert doc["target"]["debug_info"]["types_path"].startswith("(in the kernel image")
    assert doc["address_spaces"]["efi_mm"]["state"] == "table"
    for mm in ("kernel", "efi"):
        pt = [mmrwatch("ptdump", "--vmcore", str(b.elf), *src, "--mm", mm, check_rc=0).stdout
              for src in (["--vmlinux", str(k.vmlinux)], ["--system-map", str(k.system_map)])]
        assert pt[0] == pt[1] and pt[0].startswith("---[ User Space ]---")
    # auto without a vmlinux in the standard places: one line saying what to pass
    res = mmrwatch("report", "--vmcore", str(b.elf), check_rc=69)
    assert "--system-map" in res.stderr and res.stderr.count("\n") == 1, res.stderr
    other = bed.kernel("debian").system_map              # Debian 12's 6.1
    res = mmrwatch("report", "--vmcore", str(b.elf), "--system-map", str(other), check_rc=69)
    assert "does not belong to this kernel" in res.stderr and res.stderr.count("\n") == 1
    res = mmrwatch("report", "--vmcore", str(b.elf), "--system-map",
                   str(k.system_map.with_name("System.map.placeholder")), check_rc=65)
    assert "placeholder" in res.stderr and res.stderr.count("\n") == 1


def test_bad_debug_info_is_one_line_and_a_defined_exit(bed, tmp_path):
    """Corrupt, truncated and other kernels' BTF, FIFOs and devices: one line, exit 65/69."""
    from mmrwatch.collectors import btf
    b = bed.boot("debian-l5")
    real = tmp_path / "real.btf"
    with open(b.kernel.vmlinux, "rb") as f:
        real.write_bytes(btf.from_elf(f, "vmlinux"))
    trunc = tmp_path / "trunc.btf"
    trunc.write_bytes(real.read_bytes()[:len(real.read_bytes()) // 2])
    garbage = tmp_path / "garbage.btf"
    garbage.write_bytes(b"\x9f\xeb\x01\x00" + bytes(range(256)) * 4)
    fifo = tmp_path / "fifo"
    import os
    os.mkfifo(fifo)
    other = bed.kernel("debian-bullseye").vmlinux      # 5.10's .BTF on a 6.1 dump
    cases = [(["--btf", str(trunc)], 69, "truncated"), (["--btf", str(garbage)], 69, ""),
             (["--btf", str(other)], 69, "BTF of another kernel"),
             (["--btf", str(fifo)], 65, "not a regular file"),
             (["--system-map", "/dev/zero"], 65, "not a regular file"),
             (["--system-map", str(fifo)], 65, "not a regular file"),
             (["--btf", str(tmp_path / "missing")], 66, "no such file")]
    for extra, rc, words in cases:
        res = mmrwatch("report", "--vmcore", str(b.elf), *extra, check_rc=rc)
        assert res.stderr.count("\n") == 1 and words in res.stderr, (extra, res.stderr)
    ok = mmrwatch("report", "--vmcore", str(b.elf), "--btf", str(real), "--format", "json",
                  check_rc=0)
    assert '"types_path": "%s"' % real in ok.stdout


def test_kallsyms_decoder_matches_drgns_loader(bed):
    """mmrwatch's on-demand kallsyms (one names blob, searched) against drgn 0.3.0's full
    loader on a real kernel: every symbol's name and address, and lookups by both."""
    import drgn

    from mmrwatch.collectors import debuginfo, kallsyms, symbols
    b = bed.boot("debian-l5")
    prog = drgn.Program()
    prog.set_core_dump(str(b.elf))
    vmci = debuginfo.vmcoreinfo(prog)
    ours = kallsyms.decode(prog, symbols.vmcoreinfo_symbols(vmci))
    ref = symbols.load_builtin(prog, vmci)
    key = lambda s: (s.address, s.name)
    want = sorted(ref(prog, None, None, False), key=key)
    got = sorted(ours(prog, None, None, False), key=key)
    assert len(got) == len(want) > 50000
    assert [key(s) for s in got] == [key(s) for s in want]
    for name in ("init_mm", "efi_mm", "runqueues", "__start_BTF", "_stext", "prb"):
        assert [s.address for s in ours(prog, name, None, False)] == \
            [s.address for s in ref(prog, name, None, False)], name
    mm = ours(prog, "init_mm", None, True)[0]
    assert ours(prog, None, mm.address + 8, True)[0].name == "init_mm"
