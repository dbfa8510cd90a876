"""The architecture seam (issue 17 item 4): arch-neutral modules reach x86 facts only through
the ``Arch`` object they are given, and ``x86.X86_64`` keeps the promises of ``arch.Arch``."""
import ast
import inspect
from pathlib import Path

from hypothesis import given, settings, strategies as st

from mmrwatch.collectors import arch, x86

COLLECTORS = Path(x86.__file__).parent
AGENT = COLLECTORS.parent / "agent"
NEUTRAL = ("pagetable", "tables", "linear", "check", "where", "ptdump", "forensics")


def _imports(module: str, folder: Path = COLLECTORS) -> set[str]:
    tree = ast.parse((folder / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add(node.module or "")
            out.update(f"{node.module or ''}.{a.name}".lstrip(".") for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_arch_neutral_modules_do_not_import_x86():
    for module in NEUTRAL:
        bad = {m for m in _imports(module) if m == "x86" or m.startswith("x86.")}
        assert not bad, f"collectors/{module}.py imports {sorted(bad)}: use the Arch object"


def test_agent_does_not_import_x86():
    """The agent renders what the collectors found; the words for an entry's protection and
    cache mode come from ``facts.arch``, so no module in agent/ needs x86's bits."""
    modules = sorted(p.stem for p in AGENT.glob("*.py"))
    assert "report" in modules
    for module in modules:
        bad = {m for m in _imports(module, AGENT) if "x86" in m.split(".")}
        assert not bad, f"agent/{module}.py imports {sorted(bad)}: use facts.arch"


def test_x86_64_has_every_member_of_the_seam():
    want = set(arch.Arch.__annotations__) | {
        n for n, v in vars(arch.Arch).items() if inspect.isfunction(v) and not n.startswith("_")}
    a = x86.X86_64(4, (1 << 52) - 1)
    missing = sorted(n for n in want if not hasattr(a, n))
    assert not missing, missing
    for n in want:
        proto = vars(arch.Arch).get(n)
        if inspect.isfunction(proto):
            assert (list(inspect.signature(getattr(a, n)).parameters)
                    == list(inspect.signature(proto).parameters)[1:]), n


U64 = st.integers(0, (1 << 64) - 1)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([4, 5]), U64, U64, st.sampled_from([x86.PUD, x86.PMD, x86.PTE]),
       st.integers(30, 52))
def test_x86_64_fast_paths_agree_with_the_module_functions(levels, va, val, level, bits):
    """The methods precompute their masks (the walker calls them per entry); the module
    functions are the definitions."""
    mask = ((1 << bits) - 1) & ~(1 << 47)        # an SME-like C-bit cleared
    a = x86.X86_64(levels, mask)
    low = va & ((1 << a.va_bits) - 1)
    assert a.canonical(low) == x86.canonical(low, levels)
    assert a.top_index(va) == x86.top_index(va, levels)
    assert a.entry_pa(val, level) == x86.entry_pa(val, level, mask)
    if val & a.table_mask == a.table_bits:       # the walker's shortcut for table pointers
        assert val & a.pfn_mask == x86.entry_pa(val, level, mask)
