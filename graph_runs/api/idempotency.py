"""Idempotent POSTs (the Stripe rule), kept per API key for 24 hours.

The key is claimed, the work done and its answer stored in one transaction. So an answer is
stored if and only if its writes committed, and a crash between them leaves neither: there
is no "processing" row to recover. A second request with the same key waits on the first's
claim (Postgres: the primary key's row lock; SQLite: the one write lock), then replays the
stored answer. If the first still holds the key after ``idempotency_wait_seconds``, it gets
409. An answer that is an error stores nothing, since nothing was written: the key stays
free for a corrected request.
"""

import datetime as dt
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from graph_runs.access.api_keys import ApiKey
from graph_runs.api.context import ApiContext
from graph_runs.api.problems import ProblemError
from graph_runs.store.tables import api_idempotency

KEEP = dt.timedelta(hours=24)
MAX_KEY = 200
HEADER = "Idempotency-Key"
# Headers of an answer that a replay gives back.
REPLAYED_HEADERS = ("location", "etag")
PURGE_EVERY = dt.timedelta(minutes=1)
PURGE_BATCH = 1000
LOCK_NOT_AVAILABLE = "55P03"


@dataclass
class Answer:
    """A successful answer: status, JSON body and the headers worth replaying."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class _Taken(Exception):
    """Another request committed this key between our read and our claim."""


def checked_key(value: str | None) -> str | None:
    """The header's value, if any, when it is 1 to 200 printable ASCII characters."""
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_KEY or not all(" " <= c <= "~" for c in value):
        raise ProblemError(
            400,
            "invalid_input",
            f"must be 1 to {MAX_KEY} printable ASCII characters",
            field=HEADER,
        )
    return value


def fingerprint(method: str, path: str, body: dict[str, Any]) -> str:
    """What makes two requests "the same": method, path and the body's JSON, key order aside."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


def _replay(row: Any, request_hash: str) -> Answer:
    if row.request_hash != request_hash:
        raise ProblemError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with another method, path or body",
            field=HEADER,
        )
    headers = {**row.headers, "Idempotent-Replayed": "true"}
    return Answer(row.status_code, json.loads(row.body), headers)


class Idempotency:
    """Runs a POST's work once per (API key, Idempotency-Key)."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self._purged_at: dt.datetime | None = None
        self._lock = threading.Lock()

    def run(
        self,
        key: ApiKey,
        idempotency_key: str | None,
        request_hash: str,
        work: Callable[[sa.Connection], Answer],
    ) -> Answer:
        """``work``'s answer, in its own transaction; or the stored one for a replay."""
        engine = self.context.engine
        if idempotency_key is None:
            with engine.begin() as conn:
                return work(conn)
        self._purge()
        where = (
            api_idempotency.c.api_key_id == key.id,
            api_idempotency.c.key == idempotency_key,
        )
        for _ in range(2):
            now = self.context.clock()
            try:
                with engine.begin() as conn:
                    stored = conn.execute(sa.select(api_idempotency).where(*where)).one_or_none()
                    if stored is not None and stored.expires_at > now:
                        return _replay(stored, request_hash)
                    if stored is not None:
                        conn.execute(api_idempotency.delete().where(*where))
                    self._claim(conn, key, idempotency_key, request_hash, now)
                    answer = work(conn)
                    kept = {
                        k: v for k, v in answer.headers.items() if k.lower() in REPLAYED_HEADERS
                    }
                    conn.execute(
                        api_idempotency.update()
                        .where(*where)
                        .values(
                            status_code=answer.status,
                            body=json.dumps(answer.body, separators=(",", ":")),
                            headers=kept,
                        )
                    )
                    return answer
            except _Taken:
                continue  # read again: the other request's answer is committed now
            except sa.exc.OperationalError as exc:
                if getattr(exc.orig, "pgcode", None) == LOCK_NOT_AVAILABLE:
                    break
                raise
        raise ProblemError(
            409,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still being processed; retry",
            field=HEADER,
            headers={"Retry-After": "1"},
        )

    def _claim(
        self, conn: sa.Connection, key: ApiKey, idempotency_key: str, request_hash: str, now: Any
    ) -> None:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            wait_ms = max(1, int(self.context.idempotency_wait_seconds * 1000))
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")
        try:
            with conn.begin_nested():
                conn.execute(
                    api_idempotency.insert().values(
                        api_key_id=key.id,
                        key=idempotency_key,
                        request_hash=request_hash,
                        status_code=0,
                        body="",
                        headers={},
                        created_at=now,
                        expires_at=now + KEEP,
                    )
                )
        except sa.exc.IntegrityError:
            raise _Taken from None
        if postgres:
            conn.exec_driver_sql("SET LOCAL lock_timeout TO DEFAULT")

    def _purge(self) -> None:
        """Drop expired keys, a batch a minute per process: never on every request."""
        now = self.context.clock()
        with self._lock:
            if self._purged_at is not None and now - self._purged_at < PURGE_EVERY:
                return
            self._purged_at = now
        expired = (
            sa.select(api_idempotency.c.api_key_id, api_idempotency.c.key)
            .where(api_idempotency.c.expires_at <= now)
            .order_by(api_idempotency.c.expires_at)
            .limit(PURGE_BATCH)
        )
        with self.context.engine.begin() as conn:
            conn.execute(
                api_idempotency.delete().where(
                    sa.tuple_(api_idempotency.c.api_key_id, api_idempotency.c.key).in_(expired)
                )
            )
