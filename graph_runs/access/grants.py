"""Execution grants: who may run which graphs, billed to which account, until when."""

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from graph_runs.core.errors import InvalidInput, NotFound
from graph_runs.core.ids import new_id
from graph_runs.store.tables import audit, execution_grants

SCOPE_PREFIX = "graph:execute:"


class GrantDenied(Exception):
    """A run's grant does not allow it; ``code`` is what the ledger records."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Grant:
    """An execution grant as stored."""

    id: str
    owner: str
    billing_account: str
    scopes: list[str]
    connection_ids: list[str]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    revoked_by: str | None

    @classmethod
    def from_row(cls, row: Any) -> "Grant":
        """Build from a ``execution_grants`` row."""
        return cls(
            id=row.id,
            owner=row.owner,
            billing_account=row.billing_account,
            scopes=list(row.scopes),
            connection_ids=list(row.connection_ids),
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            revoked_by=row.revoked_by,
        )

    def covers(self, graph_id: str) -> bool:
        """Whether the grant's scopes allow executing ``graph_id``."""
        return f"{SCOPE_PREFIX}{graph_id}" in self.scopes or f"{SCOPE_PREFIX}*" in self.scopes

    def check(self, graph_id: str, now: dt.datetime, *, owner: str) -> None:
        """Raise GrantDenied unless this grant allows ``owner`` to run ``graph_id`` at ``now``.

        The owner is the schedule's (or, for an ad-hoc run, the grant's own): a row another
        application wrote may name someone else's grant, and must not bill them.
        """
        if self.owner != owner:
            raise GrantDenied(
                "grant_not_owner", f"grant {self.id} is not held by the run's owner {owner!r}"
            )
        if self.revoked_at is not None:
            raise GrantDenied("grant_revoked", f"grant {self.id} was revoked at {self.revoked_at}")
        if self.expires_at is not None and self.expires_at <= now:
            raise GrantDenied("grant_expired", f"grant {self.id} expired at {self.expires_at}")
        if not self.covers(graph_id):
            raise GrantDenied(
                "scope_denied", f"grant {self.id} has no scope {SCOPE_PREFIX}{graph_id}"
            )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "id": self.id,
            "owner": self.owner,
            "billing_account": self.billing_account,
            "scopes": self.scopes,
            "connection_ids": self.connection_ids,
            "created_at": _iso(self.created_at),
            "expires_at": _iso(self.expires_at),
            "revoked_at": _iso(self.revoked_at),
            "revoked_by": self.revoked_by,
        }


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _validate_scope(scope: str) -> str:
    graph = scope.removeprefix(SCOPE_PREFIX)
    if not scope.startswith(SCOPE_PREFIX) or not graph or any(c.isspace() for c in graph):
        raise InvalidInput("scope", f"{scope!r} is not graph:execute:<graph_id> or graph:execute:*")
    return scope


def create_grant(
    conn: sa.Connection,
    *,
    owner: str,
    billing_account: str,
    scopes: list[str],
    now: dt.datetime,
    expires_at: dt.datetime | None = None,
    connection_ids: list[str] | None = None,
    actor: str = "cli",
) -> Grant:
    """Validate and store a new grant."""
    if not owner.strip():
        raise InvalidInput("owner", "must not be empty")
    if not billing_account.strip():
        raise InvalidInput("billing_account", "must not be empty")
    if not scopes:
        raise InvalidInput("scope", "give at least one scope")
    scopes = [_validate_scope(s) for s in scopes]
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at", f"{_iso(expires_at)} is not in the future")
    grant = Grant(
        id=new_id("grt"),
        owner=owner,
        billing_account=billing_account,
        scopes=scopes,
        connection_ids=list(connection_ids or []),
        created_at=now,
        expires_at=expires_at,
        revoked_at=None,
        revoked_by=None,
    )
    conn.execute(
        execution_grants.insert().values(
            id=grant.id,
            owner=owner,
            billing_account=billing_account,
            scopes=grant.scopes,
            connection_ids=grant.connection_ids,
            created_at=now,
            expires_at=expires_at,
        )
    )
    audit(conn, at=now, actor=actor, action="grant.create", entity_type="grant", entity_id=grant.id)
    return grant


def get_grant(conn: sa.Connection, grant_id: str) -> Grant | None:
    """The grant with ``grant_id``, or None."""
    row = conn.execute(
        sa.select(execution_grants).where(execution_grants.c.id == grant_id)
    ).one_or_none()
    return None if row is None else Grant.from_row(row)


def billing_account_of(conn: sa.Connection, grant_id: str) -> str | None:
    """The billing account a grant charges, or None if the grant is gone."""
    grant = get_grant(conn, grant_id)
    return None if grant is None else grant.billing_account


def list_grants(conn: sa.Connection, owner: str | None = None) -> list[Grant]:
    """All grants, or an owner's, oldest first."""
    query = sa.select(execution_grants).order_by(execution_grants.c.created_at)
    if owner is not None:
        query = query.where(execution_grants.c.owner == owner)
    return [Grant.from_row(row) for row in conn.execute(query)]


def revoke_grant(conn: sa.Connection, grant_id: str, *, now: dt.datetime, by: str) -> Grant:
    """Revoke a grant; revoking a revoked grant changes nothing."""
    grant = get_grant(conn, grant_id)
    if grant is None:
        raise NotFound(f"grant {grant_id} not found")
    if grant.revoked_at is None:
        conn.execute(
            execution_grants.update()
            .where(execution_grants.c.id == grant_id)
            .values(revoked_at=now, revoked_by=by)
        )
        audit(
            conn, at=now, actor=by, action="grant.revoke", entity_type="grant", entity_id=grant_id
        )
        grant = get_grant(conn, grant_id)
        assert grant is not None
    return grant
