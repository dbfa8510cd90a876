"""Table pages by physical address: read once, viewed as uint64s, cached for one check.

Cost model (see ``tests/bench``): each table page is read once with one physical read and
viewed as its entries without copying; pages are cached for the life of the reader (a
whole linear leaf table only as its first entry), so efi_mm's kernel half, which shares
init_mm's lower tables, costs nothing the second time.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

from .deadline import Deadline, DeadlineSpec, as_deadline
from .linear import Linear

ReadPhys = Callable[[int, int], bytes]
# Table pages are one 4 KiB page of 64-bit entries on every architecture the seam serves
# (``arch``): the reader needs no arch object of its own.
PAGE_SIZE = 4096
_ZERO = bytes(PAGE_SIZE)
_MISS = object()


class TableFault(Exception):
    """A table page could not be read (outside the dump, or not RAM on a live kernel)."""


class TableReader:
    """Reads and decodes table pages by physical address, caching them for one check.

    The cache is bounded (oldest pages dropped first) so a full walk of a huge direct map
    cannot grow memory without limit; shared upper-level tables stay hot regardless.
    A leaf table that is one whole linear run is not cached at all: its memo (``linear``,
    one int) says everything a walk needs, and keeping thousands of 4 KiB pages alive costs
    more in allocation than reading them (measured in ``tests/bench``).
    """

    def __init__(self, read_phys: ReadPhys, limit: int = 8192,
                 deadline: DeadlineSpec = None) -> None:
        self._read = read_phys
        # checked before every page read, and every 64 tables walked (cache hits included)
        self.deadline: Optional[Deadline] = as_deadline(deadline)
        # OrderedDict: evicting the oldest page is O(1); next(iter(dict)) is not once many
        # slots have been deleted (CPython scans past them).
        self._cache: OrderedDict[int, Optional[memoryview]] = OrderedDict()
        self._limit = limit
        self.reads = 0
        # pa * 8 + level -> v0 when the whole table is one linear run of leaves, else 0:
        # efi_mm revisits init_mm's tables.  Bounded on its own (cleared when full).
        self.linear: dict[int, int] = {}
        self._linear_limit = limit * 8      # ints, ~100 bytes each: a few MB at most

    def table(self, pa: int) -> Optional[memoryview]:
        """The 512 entries of the table at ``pa`` (a uint64 view of the bytes read, whose
        ``.obj`` is those bytes); None for an all-zero page."""
        arr = self._cache.get(pa, _MISS)
        if arr is _MISS:
            arr = self._keep(pa, self._fetch(pa))
        return arr

    def leaf_run(self, pa: int, level: int, test: Linear) -> int:
        """v0 when the whole table at ``pa`` is one linear run of ``level`` leaves, else 0
        (also for an empty table), as ``test`` (the walker's architecture's) decides.
        Memoised; raises ``TableFault`` when unreadable."""
        key = pa * 8 + level
        v0 = self.linear.get(key)
        if v0 is not None:
            return v0
        arr = self._cache.get(pa, _MISS)
        if arr is not _MISS:
            v0 = test.whole(arr.obj, level) if arr is not None else 0
        else:
            raw = self._fetch(pa)
            v0 = test.whole(raw, level)        # 0 for an all-zero page (not present)
            if not v0:
                self._keep(pa, raw)
        if len(self.linear) >= self._linear_limit:
            self.linear.clear()
        self.linear[key] = v0
        return v0

    def _fetch(self, pa: int) -> bytes:
        if self.deadline is not None:
            self.deadline.check()
        try:
            raw = self._read(pa, PAGE_SIZE)
        except Exception as e:  # drgn.FaultError, OSError on /proc/kcore, ...
            raise TableFault(str(e).split("\n")[0]) from None
        self.reads += 1
        return bytes(raw)

    def _keep(self, pa: int, raw: bytes) -> Optional[memoryview]:
        """Cache the page read at ``pa`` as its uint64 view (None when all zero)."""
        arr = None if raw == _ZERO else memoryview(raw).cast("Q")
        if len(self._cache) >= self._limit:
            self._cache.popitem(last=False)
        self._cache[pa] = arr
        return arr
