"""The exact linear-table tests against their definition: entry k == v0 + k * stride."""
from array import array

from hypothesis import given, settings, strategies as st

from mmrwatch.collectors import linear, x86
from mmrwatch.collectors.x86 import PMD, PSE, PTE, PUD, P

LEVELS = st.sampled_from([PTE, PMD, PUD])
LINEAR = linear.Linear(x86.X86_64(4, (1 << 52) - 1))


def _naive(entries: list[int], level: int) -> int:
    v0 = entries[0]
    size = x86.level_size(level)
    if not v0 & P or (level != PTE and not v0 & PSE):
        return 0
    if level != PTE and v0 & ((size - 1) & ~x86.PAT_LARGE & x86.PTE_PFN_MASK):
        return 0
    ok = all(e == v0 + k * size for k, e in enumerate(entries))
    return v0 if ok else 0


def _table(level: int, pfn: int, flags: int, aligned: bool) -> list[int]:
    size = x86.level_size(level)
    base = (pfn * (size * 512 if aligned else size)) & x86.PTE_PFN_MASK
    v0 = base | flags | P | (PSE if level != PTE else 0)
    return [(v0 + k * size) & ((1 << 64) - 1) for k in range(512)]


def _view(entries: list[int]) -> memoryview:
    return memoryview(array("Q", entries).tobytes()).cast("Q")


@settings(max_examples=300, deadline=None)
@given(LEVELS, st.integers(0, 1 << 20), st.integers(0, 0xFFF) | st.just(1 << 63 | 0x163),
       st.booleans(), st.integers(0, 511), st.integers(0, 63), st.booleans())
def test_whole_and_part_match_the_definition(level, pfn, flags, aligned, idx, bit, corrupt):
    entries = _table(level, pfn, flags, aligned)
    if corrupt:
        entries[idx] ^= 1 << bit
    assert LINEAR.whole(array("Q", entries).tobytes(), level) == _naive(entries, level)
    i0, i1 = sorted((idx, (idx * 7 + bit) % 512))
    if i1 > i0:
        assert LINEAR.part(_view(entries), level, i0, i1) == _naive(entries[i0:i1 + 1], level)
