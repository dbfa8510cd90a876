"""JSON reports validate against the shipped JSON Schema; Markdown renders as tables."""
import json
import jsonschema
import pytest

from mmrwatch.agent import markdown, report
from mmrwatch.collectors import engine
from mmrwatch.collectors.forensics import Crash, CpuState, Translation
from tests.synth import check, report_schema, uv_kernel


def _res(healthy: bool):
    return check(uv_kernel("UV3", 2, healthy=healthy), [engine.uv_source, engine.efi_source],
                 fmt="elf")


CRASH = Crash(True, 1, "sh[97]", None, 0x7e8a6000,
              ["#PF: supervisor instruction fetch in kernel mode"],
              ["BUG: unable to handle page fault for address: 000000007e8a6000"],
              [CpuState(0, "init_mm", "swapper/0[0]"), CpuState(1, "mm of sh[97]", "sh[97]", True)],
              [Translation("init_mm", False), Translation("efi_mm", True, 0x7e8a6000, 4096, "WB",
                                                          "RW x")],
              "EFI RuntimeServicesCode (PA 0x7e8a6000, 1 MiB) at its identity VA",
              "CPU 1 faulted at 0x7e8a6000 while on ...; mapped only in efi_mm")


@pytest.mark.parametrize("healthy", [True, False])
@pytest.mark.parametrize("crash", [None, CRASH, Crash(False, verdict="no crash recorded")])
def test_json_report_matches_schema(healthy, crash):
    doc = json.loads(report.as_json(_res(healthy), crash))
    jsonschema.validate(doc, report_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_schema_rejects_what_it_should():
    doc = report.as_dict(_res(True))
    for bad in ({"schema_version": 2}, {"verdict": "fine"}, {"extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**doc, **bad}, report_schema())
    doc["ranges"][0]["phys_start"] = 4096           # an address must be a "0x..." string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, report_schema())


def test_markdown_verdict_first_and_tables():
    md = markdown.render(report.as_dict(_res(False), CRASH))
    lines = md.splitlines()
    assert lines[0].startswith("# mmrwatch report: ")
    assert lines[2].startswith("**Verdict (CRITICAL):** CRITICAL: LOCAL_MMR")
    assert lines[4].startswith("**Crash:** CPU 1 faulted at 0x7e8a6000")
    assert "| init_mm | **no** |" in md
    assert "| LOCAL_MMR | `0xfa000000` | 32 MiB | init_mm | direct | **CRITICAL** missing |" in md
    # every table row has as many cells as its header
    for i, ln in enumerate(lines):
        if ln.startswith("|---"):
            n = lines[i - 1].count(" | ")
            j = i + 1
            while j < len(lines) and lines[j].startswith("| "):
                assert lines[j].replace("\\|", "").count(" | ") == n, lines[j]
                j += 1
