"""Ranges files: valid forms, and one clear line for every mistake."""
import pytest

from mmrwatch.collectors import userranges
from mmrwatch.collectors.userranges import RangesError


def _load(tmp_path, text):
    f = tmp_path / "r.toml"
    f.write_text(text)
    return userranges.load(f)


def test_full_form(tmp_path):
    (s,) = _load(tmp_path, '''
[[range]]
name = "bmc"
start = "0xfed40000"
size = "16KiB"
mms = ["kernel", "efi"]
va = { init_mm = "direct", efi_mm = ["identity", "efi_va"] }
cache = ["UC", "UC-"]
writable = true
''')
    assert s["start"] == 0xFED40000 and s["size"] == 16384
    assert s["rules"] == {"init_mm": ["direct"], "efi_mm": ["identity", "efi_va"]}
    assert s["cache"] == frozenset({"UC", "UC-"}) and s["writable"] is True


@pytest.mark.parametrize("body,msg", [
    ('name="a"\nstart=0x1000', "missing field 'size'"),
    ('name="a"\nstart=0x1000\nsize=0', "non-empty"),
    ('name="a"\nstart=0x1001\nsize=4096', "aligned"),
    ('name="a"\nstart=0x1000\nsize="3 parsecs"', "not a size"),
    ('name="a"\nstart=0x1000\nsize=4096\nva="sideways"', "unknown rule"),
    ('name="a"\nstart=0x1000\nsize=4096\ncache="BOGUS"', "unknown cache mode"),
    ('name="a"\nstart=0x1000\nsize=4096\nmms=["user_mm"]', "mms must list"),
    ('name="a"\nstart=0x1000\nsize=4096\ncolour="red"', "unknown field 'colour'"),
    ('name="a b"\nstart=0x1000\nsize=4096', "name must be"),
])
def test_mistakes_are_one_line(tmp_path, body, msg):
    with pytest.raises(RangesError) as e:
        _load(tmp_path, "[[range]]\n" + body + "\n")
    assert msg in str(e.value) and "\n" not in str(e.value) and "range 1" in str(e.value)


def test_not_toml_and_duplicates(tmp_path):
    with pytest.raises(RangesError, match="not valid TOML"):
        _load(tmp_path, "[[range]\n")
    with pytest.raises(RangesError, match="duplicate"):
        _load(tmp_path, '[[range]]\nname="a"\nstart=0\nsize=4096\n[[range]]\nname="a"\nstart=0\nsize=4096\n')
    with pytest.raises(RangesError, match="cannot read"):
        userranges.load(tmp_path / "nope.toml")
