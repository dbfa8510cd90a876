"""The JSON Schema's enums are the code's vocabularies (``collectors/vocab.py``): a word added
or renamed on one side only fails here, before a report the schema rejects is written."""
import pytest

from mmrwatch.collectors import check, engine, ranges, uv, vocab, x86
from mmrwatch.collectors.mm import EFI_MM, INIT_MM
from tests.synth import report_schema

SCHEMA = report_schema()
PROPS = SCHEMA["properties"]
EXPECTATION = PROPS["ranges"]["items"]["properties"]["expectations"]["items"]["properties"]


def _uv_state_enum() -> list:
    (obj,) = [o for o in PROPS["uv"]["oneOf"] if o.get("type") == "object"]
    return obj["properties"]["state"]["enum"]


@pytest.mark.parametrize("schema_enum,words", [
    (PROPS["verdict"]["enum"], vocab.SEVERITIES),
    (EXPECTATION["severity"]["enum"], vocab.SEVERITIES),
    (EXPECTATION["status"]["enum"], vocab.STATUSES),
    (PROPS["ranges"]["items"]["properties"]["source"]["enum"], vocab.SOURCES),
    (_uv_state_enum(), vocab.UV_STATES),
    (EXPECTATION["cache_required"]["items"]["enum"], vocab.CACHE_MODES),
    (EXPECTATION["cache_modes"]["items"]["enum"], vocab.CACHE_MODES_SEEN),
    (EXPECTATION["extents"]["items"]["properties"]["cache_mode"]["enum"], vocab.CACHE_MODES_SEEN),
    (PROPS["crash"]["oneOf"][1]["properties"]["translations"]["items"]["properties"]
     ["cache_mode"]["oneOf"][1]["enum"], vocab.CACHE_MODES_SEEN),
    (PROPS["address_spaces"]["properties"]["init_mm"]["properties"]["state"]["enum"],
     vocab.MM_STATES),
    (PROPS["address_spaces"]["properties"]["efi_mm"]["properties"]["state"]["enum"],
     vocab.MM_STATES),
    (EXPECTATION["rule"]["enum"], ranges.VA_RULES + (ranges.STATE,)),
    (EXPECTATION["mm"]["enum"], (INIT_MM, EFI_MM)),
])
def test_schema_enum_is_the_vocabulary(schema_enum, words):
    assert list(schema_enum) == list(words)


def test_the_collectors_use_the_vocabulary():
    """The modules that produce the words take them from vocab, not from copies."""
    assert x86.CACHE_MODE_NAMES is vocab.CACHE_MODES and ranges.CACHE_MODES is vocab.CACHE_MODES
    assert x86.BROKEN == vocab.BROKEN
    assert check.SEVERITY_ORDER is vocab.SEVERITY_ORDER
    assert (uv.NOT_UV_KERNEL, uv.NOT_UV_HW, uv.HUBLESS, uv.HUBBED) == vocab.UV_STATES[:4]
    assert list(vocab.SEVERITY_ORDER) == list(vocab.SEVERITIES)


def test_the_sources_are_labelled_from_the_vocabulary(tmp_path):
    """A source's label is its ranges' ``source`` and its summary's key (the report's uv
    block is ``summaries[SOURCE_UV]``): the engine names them with vocab's words."""
    assert engine.label_of(engine.uv_source) == vocab.SOURCE_UV
    assert engine.label_of(engine.efi_source) == vocab.SOURCE_EFI
    toml = tmp_path / "ranges.toml"
    toml.write_text('[[range]]\nname = "x"\nstart = 0x1000\nsize = 4096\n')
    assert engine.label_of(engine.file_source(toml)) == vocab.SOURCE_CONFIG
    assert ranges.CACHE_ALIASES["uncached"] == vocab.UNCACHED == {vocab.UC, vocab.UC_MINUS}
