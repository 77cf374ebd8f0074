"""A dispatch run's calls waiting for their account's call place, in the order they fired.

The database decides who gets a place (``graph_runs.dispatch.call_places``); this is the
run's side of it: which of its fired slots wait, which were woken to call, which were
woken to find that their call is no longer this run's to make, and which ended here
without their outcome written (so may still hold a place to give back). It lives on the
run's event loop: the transactions that take places get lists from it, never the queue.
"""

import asyncio
from typing import Any

from graph_runs.dispatch.call_places import Taken


class PlaceQueue:
    """Fired slots waiting for a call place: ledger id -> (billing account, wake-up)."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[str | None, asyncio.Event]] = {}
        self.not_called: set[str] = set()
        self.unreleased: set[str] = set()
        # Slots given a place handed over in memory, still to be marked in the database.
        self.handed_over: list[str] = []

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def join(self, row: Any) -> None:
        """``row`` (a fired slot) waits for a place."""
        self._waiting[row.id] = (row.billing_account, asyncio.Event())

    async def turn(self, ledger_id: str) -> bool:
        """Wait for the slot's place, if it waits; False if its call is not to be made."""
        waiting = self._waiting.get(ledger_id)
        if waiting is not None:
            await waiting[1].wait()
        return ledger_id not in self.not_called

    def waiting(self) -> list[str]:
        """Every waiting slot, in the order they fired (the order places go in)."""
        return list(self._waiting)

    def wake(self, taken: Taken) -> int:
        """Wake the slots that have a place now, and those whose call will not be made.

        Returns how many were woken to call.
        """
        self.not_called.update(taken.gone)
        # In the order they wait (not a set's): the simulator replays each seed exactly.
        woken = [k for k in self._waiting if k in taken.placed or k in taken.gone]
        for ledger_id in woken:
            self._waiting.pop(ledger_id)[1].set()
        return sum(k in taken.placed for k in woken)

    def hand_over(self, account: str) -> bool:
        """A call of ``account`` ended: its place goes to the first slot waiting for one.

        No transaction: the ended call's row holds the place in the database until its
        outcome is written, and the same transaction marks the slot it went to
        (``handed_over``), so the database never counts fewer calls than are made.
        """
        for ledger_id, (waiting_for, event) in self._waiting.items():
            if waiting_for == account:
                del self._waiting[ledger_id]
                self.handed_over.append(ledger_id)
                event.set()
                return True
        return False

    def abandon(self) -> None:
        """The run lost its lease: the next attempt makes every waiting call, not this run."""
        self.wake(Taken(gone=set(self._waiting)))
