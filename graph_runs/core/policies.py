"""Per-schedule policies: overlap, catch-up, jitter and bounds, and the DURATION syntax.

Each policy is stored in the schedules table, so a row written by another application
carries its own; the defaults here are the columns' server defaults too.
"""

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from graph_runs.core.errors import InvalidInput

OVERLAP_POLICIES = ("skip", "buffer_one", "allow_all", "cancel_other")
CATCHUP_POLICIES = ("none", "latest", "all")
DEFAULT_OVERLAP = "skip"
DEFAULT_CATCHUP = "latest"
DEFAULT_CATCHUP_WINDOW = dt.timedelta(hours=1)
DEFAULT_PAUSE_AFTER_FAILURES = 3
ON_APPROVAL_TIMEOUT = ("skip", "approve")
DEFAULT_APPROVAL_TIMEOUT = dt.timedelta(hours=24)

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = dt.timedelta(days=366)


def parse_duration(field: str, text: str) -> dt.timedelta:
    """Read a DURATION (``90s``, ``10m``, ``1h``, ``2d``); raise InvalidInput naming ``field``."""
    match = _DURATION.match(text or "")
    if match is None:
        raise InvalidInput(field, f"{text!r} is not a duration; write it like 90s, 10m, 1h or 2d")
    value = dt.timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if value > MAX_DURATION:
        raise InvalidInput(field, f"{text!r} is longer than {MAX_DURATION.days} days")
    return value


def format_duration(seconds: int) -> str:
    """The shortest exact DURATION for ``seconds``, as describe shows it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def jitter_offset(schedule_id: str, slot: dt.datetime, jitter_seconds: int) -> dt.timedelta:
    """The slot's fixed delay in [0, jitter): a hash of schedule and slot, never random.

    The same slot gets the same delay on every tick, retry and re-evaluation, so jitter moves
    when a slot fires without ever changing which slots fire. Whole seconds keep due times
    readable.
    """
    if jitter_seconds <= 0:
        return dt.timedelta(0)
    digest = hashlib.sha256(f"{schedule_id}|{slot.isoformat()}".encode()).digest()
    return dt.timedelta(seconds=int.from_bytes(digest[:8], "big") % jitter_seconds)


@dataclass(frozen=True)
class Policies:
    """The policies in force for one schedule, read from its row."""

    overlap: str = DEFAULT_OVERLAP
    catchup: str = DEFAULT_CATCHUP
    catchup_window: dt.timedelta = DEFAULT_CATCHUP_WINDOW
    jitter_seconds: int = 0
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    max_runs: int | None = None
    pause_after_failures: int = DEFAULT_PAUSE_AFTER_FAILURES

    @classmethod
    def from_row(cls, row: Any) -> "Policies":
        """Policies of a schedules row; NULLs written by other applications mean the default."""
        window = row.catchup_window_seconds
        return cls(
            overlap=row.overlap or DEFAULT_OVERLAP,
            catchup=row.catchup or DEFAULT_CATCHUP,
            catchup_window=(
                DEFAULT_CATCHUP_WINDOW if window is None else dt.timedelta(seconds=window)
            ),
            jitter_seconds=row.jitter_seconds or 0,
            start_at=row.start_at,
            end_at=row.end_at,
            max_runs=row.max_runs,
            pause_after_failures=(
                DEFAULT_PAUSE_AFTER_FAILURES
                if row.pause_after_failures is None
                else row.pause_after_failures
            ),
        )

    def due_at(self, schedule_id: str, slot: dt.datetime) -> dt.datetime:
        """When ``slot`` comes due: the slot plus its jitter."""
        return slot + jitter_offset(schedule_id, slot, self.jitter_seconds)
