"""Call places: at most ``max_calls_per_account`` API calls per billing account, over all runs.

Each dispatch run bounds its own calls per account in memory (``ConcurrentCaller``), but
runs go in parallel (``GRAPH_RUNS_DISPATCH_PARALLEL_RUNS``, single-slot runs beside them),
so that bound alone let one tenant's 09:00 burst have several times its share at the API.
The database holds the count that every run sees: a fired slot takes one of its account's
places (its row's ``call_place_at``) before its call is made, and gives it back when its
call ends: the row leaves ``running``/``cancelling`` (``slot_status`` clears the column on
every such move), is handed off to the sensor's polls (``poll_after``), or its call ended
without an outcome (its next attempt takes a place again). A place is a property of the
row, so none leaks with a run: the row of a dead run keeps its place until the run's next
attempt resumes the call under it, or the slot is settled. A slot's timeout runs from its
first call (``called_at``, ``api_runs.give_up_at``): one that waited for a place is not
given up on for the wait.

Places are taken in the transaction that fires the slots (no transaction of their own, the
common case), as many as the run has room to call at once. A call that ends hands its place
to the next slot of its account waiting in the same run, in memory, and the transaction
that records its outcome marks the slot it went to (``dispatch/place_queue.py``); other
waiting slots take places in that transaction or at the run's next ask. On PostgreSQL
each account's count is taken under a transaction-scoped advisory lock, in one order, so
two runs never both see the last free place; SQLite's writers are serial. The lock is the
last one each transaction takes, so it waits on no one.

A slot without a billing account has no cap: it never waits for a place.
"""

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from graph_runs.core.statuses import CANCELLING, RUNNING
from graph_runs.store import slot_status
from graph_runs.store.tables import HOLDS_CALL_PLACE, run_ledger

_CHUNK = 1_000
# The advisory lock space of call places (``pg_advisory_xact_lock(class, key)``): "grpl".
_LOCK_CLASS = 0x6772706C


@dataclass
class Taken:
    """What one ``take`` gave: slots that may call now, and slots that must not call."""

    placed: set[str] = field(default_factory=set)
    # Rows that are no longer this run's to call: settled, handed off, or fired again by
    # another run. Their call is not made.
    gone: set[str] = field(default_factory=set)


def lock_key(account: str) -> int:
    """A stable 32-bit key for an account's advisory lock (a collision only serialises more)."""
    digest = hashlib.blake2b(account.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _lock_accounts(conn: sa.Connection, accounts: list[str]) -> None:
    if conn.dialect.name != "postgresql" or not accounts:
        return
    keys = sorted({lock_key(a) for a in accounts})
    # Volatile functions in the select list run after the ORDER BY: the locks are taken in
    # key order, so two transactions taking overlapping sets never wait on each other.
    conn.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(:cls, k) FROM unnest(CAST(:keys AS INTEGER[])) AS k "
            "ORDER BY k"
        ),
        {"cls": _LOCK_CLASS, "keys": keys},
    )


def held(conn: sa.Connection, accounts: list[str]) -> dict[str, int]:
    """How many call places each account's slots hold now, over every run."""
    counts: dict[str, int] = {}
    for start in range(0, len(accounts), _CHUNK):
        query = (
            sa.select(run_ledger.c.billing_account, sa.func.count())
            .where(
                HOLDS_CALL_PLACE, run_ledger.c.billing_account.in_(accounts[start : start + _CHUNK])
            )
            .group_by(run_ledger.c.billing_account)
        )
        counts.update({account: n for account, n in conn.execute(query)})
    return counts


def take(
    conn: sa.Connection,
    wanted: list[str],
    *,
    dagster_run_id: str | None,
    cap: int,
    now: dt.datetime,
    room: int | None = None,
) -> Taken:
    """Give call places to these fired slots, as far as their accounts allow.

    ``wanted`` is in the order the places go (the earliest due first). A slot that holds a
    place already (a call resumed by a later attempt) keeps it; one without a billing
    account needs none. With ``dagster_run_id``, a slot that run no longer fires (another
    attempt fired it since) is ``gone``; without it, the caller is the fenced fire itself.
    ``room`` bounds the new places: how many more calls the run can make at once (a place
    held by a call still queued in the run would be one no other run could use). Run as
    the last step of its transaction.
    """
    rows: list[Any] = []
    for start in range(0, len(wanted), _CHUNK):
        rows.extend(
            conn.execute(
                sa.select(
                    run_ledger.c.id,
                    run_ledger.c.status,
                    run_ledger.c.billing_account,
                    run_ledger.c.dagster_run_id,
                    run_ledger.c.poll_after,
                    run_ledger.c.call_place_at,
                ).where(run_ledger.c.id.in_(wanted[start : start + _CHUNK]))
            )
        )
    by_id = {r.id: r for r in rows}
    taken = Taken()
    asking: list[tuple[str, str]] = []  # (ledger id, account), in the order places go
    for ledger_id in wanted:
        row = by_id.get(ledger_id)
        if (
            row is None
            or row.status not in (RUNNING, CANCELLING)
            or row.poll_after is not None
            or (dagster_run_id is not None and row.dagster_run_id != dagster_run_id)
        ):
            taken.gone.add(ledger_id)
        elif row.call_place_at is not None or not row.billing_account:
            taken.placed.add(ledger_id)
        else:
            asking.append((ledger_id, row.billing_account))
    if not asking:
        return taken
    accounts = sorted({account for _, account in asking})
    _lock_accounts(conn, accounts)
    counts = held(conn, accounts)
    free = {account: max(cap - counts.get(account, 0), 0) for account in accounts}
    left = len(asking) if room is None else room
    granted: list[str] = []
    for ledger_id, account in asking:
        if left <= 0:
            break
        if free[account] > 0:
            free[account] -= 1
            left -= 1
            granted.append(ledger_id)
    slot_status.give_call_places(conn, granted, now=now)
    taken.placed.update(granted)
    return taken


def over_cap(conn: sa.Connection, cap: int) -> Mapping[str, int]:
    """Accounts holding more than ``cap`` places: none, ever (the simulator's invariant)."""
    query = (
        sa.select(run_ledger.c.billing_account, sa.func.count())
        .where(HOLDS_CALL_PLACE)
        .group_by(run_ledger.c.billing_account)
        .having(sa.func.count() > cap)
    )
    return {account: n for account, n in conn.execute(query)}
