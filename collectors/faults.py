"""Which exceptions mean "this kernel state cannot be read or trusted", and the one way such a
fault becomes health instead of a crash.

A dump or a live kernel can hold anything: a page left out of the dump, a pointer into
nowhere, a count no kernel could have, and (without DWARF) types from a BTF blob that
passed the layout check but describes a struct differently.  drgn reports those as
``FaultError`` / ``ObjectAbsentError`` / ``OutOfBoundsError``, and, on types that do not
have what mmrwatch reads, as ``LookupError``, ``AttributeError`` or ``TypeError`` naming a C
type; values used as sizes or shifts end in ``ValueError`` / ``OverflowError`` /
``MemoryError``.  None of them is a bug in mmrwatch, and none may end a whole check: each
boundary that reads one branch of kernel state (a range source, an address space, a crash
forensics section) catches exactly ``is_kernel_fault`` and turns it into a note and an
"unreadable" finding or field, with ``why`` as its one-line cause.

What is *not* a kernel fault propagates on purpose: a Python ``AttributeError`` on a
non-drgn object, a ``KeyError``/``IndexError`` of mmrwatch's own containers, a
``TypeError`` about Python objects are bugs, and the CLI reports them as exit 70.
"""
from __future__ import annotations

import re
from typing import Callable, Optional, TypeVar

import drgn

from .errors import one_line

T = TypeVar("T")

# Always about the data: drgn could not read it, or a value from it was no possible size.
DATA_FAULTS = (drgn.FaultError, drgn.ObjectAbsentError, drgn.OutOfBoundsError,
               ValueError, OverflowError, MemoryError)
# drgn's TypeError messages name C types in quotes ("cannot convert 'struct x' to int",
# "'struct x' is not an array or pointer"); Python's own say "'NoneType' object ...".
_DRGN_TYPE_ERROR = re.compile(r"^(cannot convert (to )?'[^']*'( to |$)|'[^']*' (is not|has no) "
                              r"|invalid operands)")


def is_kernel_fault(e: BaseException) -> bool:
    """Whether ``e`` comes from kernel data or kernel types, not from mmrwatch's code."""
    if isinstance(e, DATA_FAULTS):
        return True
    if isinstance(e, AttributeError):          # drgn: "'struct x' has no member 'y'"
        return isinstance(getattr(e, "obj", None), (drgn.Object, drgn.Type))
    if isinstance(e, drgn.ObjectNotFoundError) or type(e) is LookupError:
        return True                            # drgn: no such object / type / member
    if isinstance(e, TypeError):
        return bool(_DRGN_TYPE_ERROR.match(str(e)))
    return False


def why(e: BaseException, limit: int = 200) -> str:
    """The fault as one printable line (drgn's messages can be multi-line)."""
    text = str(e).strip().splitlines()
    return one_line(f"{type(e).__name__}: {text[0]}" if text else type(e).__name__, limit)


def catch(read: Callable[[], T]) -> tuple[Optional[T], str]:
    """``(read(), "")``, or ``(None, why)`` when the kernel state it reads is unreadable
    (``is_kernel_fault``); any other exception is a bug and propagates."""
    try:
        return read(), ""
    except Exception as e:                     # noqa: BLE001 - filtered right here
        if not is_kernel_fault(e):
            raise
        return None, why(e)


def attempt(what: str, read: Callable[[], T], notes: list[str], default: T) -> T:
    """``read()``, or ``default`` and the note "WHAT: unreadable (why)" (see ``catch``)."""
    value, bad = catch(read)
    if bad:
        notes.append(f"{what}: unreadable ({bad})")
        return default
    return value  # type: ignore[return-value]
