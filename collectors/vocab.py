"""The words mmrwatch's outputs are made of, defined once.

Every value here appears verbatim in a report (text, JSON, Markdown), a metric label or the
JSON Schema (``pkg/report.schema.json``), so a consumer (an alert rule, a ticket parser, a
dashboard) depends on the exact spelling.  The code that produces them and the renderers
that show them import these names instead of repeating the strings, and
``tests/unit/test_vocab.py`` holds the schema's enums to these tuples: a word added or
renamed here and not there fails a test instead of producing reports the schema rejects.

Plain ``str`` constants, not ``enum.Enum``: findings, snapshots and JSON documents carry
the strings themselves, so comparing, hashing and serialising need no conversion.
Nothing here imports drgn (the CLI's ``--help`` and the error model use it).
"""
from __future__ import annotations

# -- severities (a finding's, and a report's verdict: the worst finding's) -------------------
OK, INFO, WARNING, CRITICAL = "ok", "info", "warning", "critical"
SEVERITIES = (OK, INFO, WARNING, CRITICAL)          # in increasing order
SEVERITY_ORDER = {s: i for i, s in enumerate(SEVERITIES)}

# -- statuses: what one address space does with one range ----------------------------------
MISSING, PARTIAL, MISDIRECTED = "missing", "partial", "misdirected"
WRONG_CACHE, WRONG_PERM = "wrong-cache", "wrong-perm"
STALE, DIVERGED = "stale", "diverged"               # efi_mm's copy of the kernel half is old
SKIPPED, UNREADABLE = "skipped", "unreadable"
STATUSES = (OK, MISSING, PARTIAL, MISDIRECTED, WRONG_CACHE, WRONG_PERM, STALE, DIVERGED,
            SKIPPED, UNREADABLE)
# Statuses whose bytes are "not mapped at the VA the other side uses" (the 2016 failure).
UNMAPPED_STATUSES = (MISSING, PARTIAL, MISDIRECTED, UNREADABLE)

# -- range sources (a range's ``source``, the ranges{source} label) --------------------------
SOURCE_UV, SOURCE_EFI, SOURCE_CONFIG = "uv", "efi-memmap", "config"
SOURCES = (SOURCE_UV, SOURCE_EFI, SOURCE_CONFIG)

# -- UV system states (the report's uv.state, mmrwatch_uv_info{state}) -----------------------
NOT_UV_KERNEL, NOT_UV_HW = "not-uv-kernel", "uv-kernel-non-uv-hardware"
HUBLESS, HUBBED = "hubless", "hubbed"
UV_STATES = (NOT_UV_KERNEL, NOT_UV_HW, HUBLESS, HUBBED, UNREADABLE)

# -- cache modes (x86 PAT names, as /sys/kernel/debug/page_tables prints them) ---------------
WB, WC, UC_MINUS, UC, WT, WP = "WB", "WC", "UC-", "UC", "WT", "WP"
CACHE_MODES = (WB, WC, UC_MINUS, UC, WT, WP)
UNCACHED = frozenset({UC, UC_MINUS})   # either uncached mode (ioremap() gives UC- on x86)
BROKEN = "broken"             # an entry selecting no page_cache_mode (x86.py says why)
CACHE_MODES_SEEN = CACHE_MODES + (BROKEN,)          # what a mapping can be found to have

# -- address-space states (the report's address_spaces.*.state) ------------------------------
TABLE, NO_TABLE = "table", "no-table"
MM_STATES = (TABLE, NO_TABLE)

# -- error kinds: why a target, a file or a check could not be used -------------------------
# The collectors raise the first four; the agent adds the others.  Each kind's exit code,
# collector_error{kind} label and Nagios code are in ``agent/exits.py``, the one table.
NOINPUT, DATA, DEBUGINFO, PERMISSION = "noinput", "data", "debuginfo", "permission"
TIMEOUT, CONFIG, INTERNAL = "timeout", "config", "internal"
USAGE, OSERR = "usage", "oserr"                     # only before a daemon's first check
STARTING = "starting"         # not an error: the daemon's state before its first check
ERROR_KINDS = (NOINPUT, DATA, DEBUGINFO, PERMISSION, TIMEOUT, CONFIG, INTERNAL, USAGE, OSERR)
