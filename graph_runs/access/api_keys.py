"""Keys of the management API: made by ``graph-runs api-keys create``, shown once, kept hashed.

A key's token is ``{key id}.{secret}``. The id finds the row; the secret is compared with its
stored SHA-256 in constant time. The secret carries 256 random bits, so a plain hash is
enough: there is no password to guess, and a slow hash would cost every request.

A key without an owner acts for the app and may name any owner. A key with an owner sees and
touches only that owner's schedules, grants, slots and approvals.
"""

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from graph_runs.core.cron import format_utc_or_none
from graph_runs.core.errors import InvalidInput, NotFound
from graph_runs.core.ids import new_id
from graph_runs.store.tables import api_keys, audit

SCOPES = (
    "schedules:read",
    "schedules:write",
    "grants:write",
    "approvals:write",
    "billing:read",
    "billing:write",
)
MAX_NAME = 200
# ``key_`` and 32 hex digits: what ``new_id`` makes, and the length of the id column's values.
KEY_ID_LENGTH = 36


@dataclass(frozen=True)
class ApiKey:
    """A key as stored, without its secret."""

    id: str
    name: str
    owner: str | None
    scopes: tuple[str, ...]
    created_at: dt.datetime
    created_by: str
    revoked_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Any) -> "ApiKey":
        """The key in a row of ``api_keys``."""
        return cls(
            id=row.id,
            name=row.name,
            owner=row.owner,
            scopes=tuple(row.scopes),
            created_at=row.created_at,
            created_by=row.created_by,
            revoked_at=row.revoked_at,
        )

    @property
    def actor(self) -> str:
        """Who the audit log names for this key's writes."""
        return f"api:{self.id}"

    def view(self) -> dict[str, Any]:
        """A JSON-ready view: never the secret, which is not kept."""
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "scopes": list(self.scopes),
            "created_at": format_utc_or_none(self.created_at),
            "created_by": self.created_by,
            "revoked_at": format_utc_or_none(self.revoked_at),
        }


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    conn: sa.Connection,
    *,
    name: str,
    owner: str | None,
    scopes: list[str],
    now: dt.datetime,
    by: str = "cli",
) -> tuple[ApiKey, str]:
    """Store a new key; returns it and its token, which is shown once and kept nowhere."""
    if not name.strip() or len(name) > MAX_NAME:
        raise InvalidInput("name", f"must be 1 to {MAX_NAME} characters")
    if owner is not None and (not owner.strip() or len(owner) > MAX_NAME):
        raise InvalidInput("owner", f"must be 1 to {MAX_NAME} characters")
    if not scopes:
        raise InvalidInput("scopes", f"give at least one of {', '.join(SCOPES)}")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidInput("scopes", f"{unknown[0]!r} is not one of {', '.join(SCOPES)}")
    key_id = new_id("key")
    secret = secrets.token_urlsafe(32)
    ordered = sorted(set(scopes), key=SCOPES.index)
    conn.execute(
        api_keys.insert().values(
            id=key_id,
            name=name,
            owner=owner,
            scopes=ordered,
            secret_hash=_hash(secret),
            created_at=now,
            created_by=by,
        )
    )
    audit(
        conn,
        at=now,
        actor=by,
        action="api_key.create",
        entity_type="api_key",
        entity_id=key_id,
        detail={"name": name, "owner": owner, "scopes": ordered},
    )
    key = ApiKey(key_id, name, owner, tuple(ordered), now, by, None)
    return key, f"{key_id}.{secret}"


def list_api_keys(conn: sa.Connection) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
    return [ApiKey.from_row(row) for row in conn.execute(query)]


def revoke_api_key(conn: sa.Connection, key_id: str, *, now: dt.datetime, by: str) -> ApiKey:
    """Revoke a key at once; revoking a revoked key changes nothing."""
    row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    if row.revoked_at is None:
        conn.execute(
            api_keys.update().where(api_keys.c.id == key_id).values(revoked_at=now, revoked_by=by)
        )
        audit(
            conn, at=now, actor=by, action="api_key.revoke", entity_type="api_key", entity_id=key_id
        )
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
    return ApiKey.from_row(row)


def authenticate(conn: sa.Connection, token: str) -> ApiKey | None:
    """The live key this token belongs to, or None: unknown, revoked or a wrong secret alike."""
    key_id, dot, secret = token.partition(".")
    if not dot or len(key_id) != KEY_ID_LENGTH or not secret:
        return None
    row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
    # A hash is compared even for an unknown id, so the answer's timing says nothing of
    # which ids exist.
    stored = row.secret_hash if row is not None else _hash("")
    matches = hmac.compare_digest(stored.encode(), _hash(secret).encode())
    if row is None or not matches or row.revoked_at is not None:
        return None
    return ApiKey.from_row(row)
