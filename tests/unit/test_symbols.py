"""Symbol sources without DWARF: /proc/kallsyms with hidden addresses, System.map checks."""
import pytest

from mmrwatch.collectors import symbols

VMCI = {"OSRELEASE": "5.10.0-test", "KERNELOFFSET": "1000000",
        "SYMBOL(_stext)": "ffffffff82000000", "SYMBOL(init_uts_ns)": "ffffffff83812340",
        "SYMBOL(mem_section)": "ffff888012345000"}     # a pointer's value: not comparable


def _map(tmp_path, text):
    p = tmp_path / "System.map"
    p.write_text(text)
    return str(p)


def test_hidden_kallsyms_addresses_are_refused(tmp_path):
    """kptr_restrict / perf_event_paranoid: every address reads 0 without CAP_SYSLOG."""
    p = tmp_path / "kallsyms"
    p.write_text("0000000000000000 T _stext\n0000000000000000 D init_mm\n")
    with pytest.raises(symbols.SymbolError) as e:
        symbols.load_proc(str(p))
    assert e.value.kind == "permission" and "CAP_SYSLOG" in str(e.value)


def test_system_map_is_moved_by_kaslr_and_checked(tmp_path):
    good = _map(tmp_path, "ffffffff81000000 T _stext\nffffffff82812340 D init_uts_ns\n"
                          "ffffffff82900000 D init_mm\n0000000000033c40 D runqueues\n")
    idx = symbols.load_system_map(good, VMCI)
    by = {s.name: s.address for s in idx(None, None, None, False)}
    assert by["init_mm"] == 0xffffffff83900000          # + KERNELOFFSET
    assert by["runqueues"] == 0x33c40                    # per-CPU offset: not moved


@pytest.mark.parametrize("text,kind,words", [
    ("ffffffff81000000 T _stext\nffffffff82812000 D init_uts_ns\n", "debuginfo",
     "does not belong to this kernel"),
    ("ffffffff81000000 T other\n", "debuginfo", "shares no symbol"),
    ("ffffffffffffffff B The real System.map is in the linux-image-5.10.0-test-dbg package\n",
     "data", "placeholder"),
    ("not a map at all\n", "data", "not a System.map line"),
    ("", "data", "empty"),
])
def test_wrong_system_maps_are_refused(tmp_path, text, kind, words):
    with pytest.raises(symbols.SymbolError) as e:
        symbols.load_system_map(_map(tmp_path, text), VMCI)
    assert e.value.kind == kind and words in str(e.value) and "\n" not in str(e.value)


def test_a_copy_of_this_boots_kallsyms_is_taken_as_is(tmp_path):
    """The kallsyms drop-in's copy of /proc/kallsyms has runtime addresses already: used
    without moving them (and still checked against VMCOREINFO)."""
    copy = _map(tmp_path, "ffffffff82000000 T _stext\nffffffff83812340 D init_uts_ns\n"
                          "ffffffff83900000 D init_mm\nffffffffc0001000 t mod_fn\t[mod]\n")
    idx = symbols.load_system_map(copy, VMCI)
    assert [s.address for s in idx(None, "init_mm", None, False)] == [0xffffffff83900000]


def test_garbage_lines_in_a_system_map_are_no_symbols(tmp_path):
    """Only line 1 and the VMCOREINFO symbols are checked up front: a corrupt line further
    down must not break a later lookup."""
    text = ("ffffffff81000000 T _stext\nffffffff82812340 D init_uts_ns\n"
            "zz t efi_mm\n-10 d foo\nffffffff82900000 \xe9 bar\nffffffff82900000 D init_mm\n")
    idx = symbols.load_system_map(_map(tmp_path, text), VMCI)
    for name in ("efi_mm", "foo", "bar"):
        assert idx(None, name, None, False) == []
    assert len(idx(None, "init_mm", None, False)) == 1
    assert len(idx(None, None, None, False)) == 3
