"""How every failure ends, in one table: an error kind -> the CLI exit code, the daemon's
``collector_error{kind}`` label and the Nagios code.

The collectors and the agent raise ``MmrwatchError`` with a kind (``collectors/errors.py``);
the CLI (``cli.main``), the daemon (``monitor``, ``serve``) and the plugin (``nagios``) look
the kind up here instead of each keeping an except chain with its own numbers.  The exit
codes are the sysexits.h ones, documented in ``cli.EXIT_CODES`` and ``docs/mmrwatch.1``
(``tests/unit/test_manpage.py`` holds the three to each other).

Nothing here imports drgn: ``mmrwatch --help`` prints these codes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mmrwatch.collectors.errors import MmrwatchError
from mmrwatch.collectors.vocab import (CONFIG, DATA, DEBUGINFO, INTERNAL, NOINPUT, OSERR,
                                       PERMISSION, STARTING, TIMEOUT, USAGE)

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL = 0, 1, 2
EXIT_USAGE, EXIT_DATA, EXIT_NOINPUT, EXIT_DEBUGINFO = 64, 65, 66, 69
EXIT_SOFTWARE, EXIT_OSERR, EXIT_PERMISSION, EXIT_CONFIG = 70, 71, 77, 78

# The Nagios plugin API's codes (`mmrwatch check`).
NAGIOS_OK, NAGIOS_WARNING, NAGIOS_CRITICAL, NAGIOS_UNKNOWN = 0, 1, 2, 3


@dataclass(frozen=True)
class Outcome:
    """What one kind of failure becomes in each front end."""

    exit: Optional[int]      # report/ptdump/where, and serve at startup; None: cannot happen
    label: Optional[str]     # collector_error{kind}; None: the daemon's loop never sees it
    nagios: Optional[int]    # mmrwatch check; None: not a failure of a check


# One row per kind.  The order is the order of the collector_error series.  A check that
# cannot judge is UNKNOWN whatever the reason (the plugin API has no finer code).
OUTCOMES: dict[str, Outcome] = {
    STARTING: Outcome(None, STARTING, None),              # no check run yet (not a failure)
    NOINPUT: Outcome(EXIT_NOINPUT, NOINPUT, NAGIOS_UNKNOWN),
    PERMISSION: Outcome(EXIT_PERMISSION, PERMISSION, NAGIOS_UNKNOWN),
    DEBUGINFO: Outcome(EXIT_DEBUGINFO, DEBUGINFO, NAGIOS_UNKNOWN),
    DATA: Outcome(EXIT_DATA, DATA, NAGIOS_UNKNOWN),
    TIMEOUT: Outcome(None, TIMEOUT, NAGIOS_UNKNOWN),      # one-shot commands have no deadline
    CONFIG: Outcome(EXIT_CONFIG, CONFIG, NAGIOS_UNKNOWN),
    INTERNAL: Outcome(EXIT_SOFTWARE, INTERNAL, NAGIOS_UNKNOWN),
    USAGE: Outcome(EXIT_USAGE, None, NAGIOS_UNKNOWN),     # serve refuses to start instead
    OSERR: Outcome(EXIT_OSERR, None, NAGIOS_UNKNOWN),     # (listen, textfile: startup only)
}
# collector_error{kind}: every label the daemon exports (one series each, always present)
LABELS = tuple(o.label for o in OUTCOMES.values() if o.label)


def outcome(err: MmrwatchError, daemon: bool = False) -> Outcome:
    """The row for ``err``, in a one-shot command or (``daemon``) in ``serve``.

    The one rule that depends on the context: an error in mmrwatch's own configuration file
    (``err.config``: the ranges file).  A one-shot command (``report``) reports it by its
    kind, missing 66 or unusable 65, as for any file named on the command line; the daemon
    reports it as configuration: ``serve`` exits EX_CONFIG (78) at startup, so that systemd
    fails the unit with the cause, and a file broken later (read again on SIGHUP) is
    labelled ``config`` in ``collector_error`` while the daemon keeps running.
    """
    if daemon and err.config:
        return OUTCOMES[CONFIG]
    return OUTCOMES[err.kind]
