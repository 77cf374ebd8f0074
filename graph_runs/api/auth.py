"""Who is asking: the bearer key, its scope and its owner.

Every answer to a missing, unknown or revoked key is the same 401, so that a guess learns
nothing. An owner-scoped key asking for another owner's schedule, grant, slot or approval
gets the same 404 as for an id that does not exist.

A key found live is trusted for ``KEY_CACHE_SECONDS`` of the API's clock before it is read
again: one database round trip fewer per request (docs/benchmarks.md, "The management
API"). So a key revoked by ``graph-runs api-keys revoke`` stops working within that time
on every server.
"""

import datetime as dt
import hashlib
import threading
from collections.abc import Callable

import sqlalchemy as sa
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from graph_runs.access.api_keys import ApiKey, authenticate
from graph_runs.api.context import ApiContext, api_context
from graph_runs.api.problems import ProblemError
from graph_runs.core.errors import InvalidInput, NotFound

MAX_TOKEN = 200
KEY_CACHE_SECONDS = 5
# Past this many cached keys the cache starts over: a flood of valid keys cannot grow it.
MAX_CACHED_KEYS = 10_000


def unauthorized() -> ProblemError:
    """The one answer to every missing, unknown, revoked or malformed key."""
    return ProblemError(
        401,
        "unauthorized",
        "give a live API key as `Authorization: Bearer <key>`",
        headers={"WWW-Authenticate": "Bearer"},
    )


class KeyCache:
    """Keys found live, by the SHA-256 of their token (no token is held), for a few seconds."""

    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.clock = clock
        self._found: dict[bytes, tuple[ApiKey, dt.datetime]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> ApiKey | None:
        """The cached key of ``token``, unless its time is up."""
        entry = self._found.get(hashlib.sha256(token.encode()).digest())
        if entry is None or self.clock() - entry[1] >= dt.timedelta(seconds=KEY_CACHE_SECONDS):
            return None
        return entry[0]

    def put(self, token: str, key: ApiKey) -> None:
        """Remember a key just found live."""
        with self._lock:
            if len(self._found) >= MAX_CACHED_KEYS:
                self._found.clear()
            self._found[hashlib.sha256(token.encode()).digest()] = (key, self.clock())


def _token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not 0 < len(token) <= MAX_TOKEN:
        return None
    return token.strip()


def require(scope: str) -> Callable[..., object]:
    """A dependency: the request's key, which must hold ``scope``."""

    async def principal(request: Request, context: ApiContext = Depends(api_context)) -> ApiKey:
        token = _token(request)
        if token is None:
            raise unauthorized()
        cache: KeyCache = request.app.state.keys
        key = cache.get(token)
        if key is None:

            def look_up(conn: sa.Connection) -> ApiKey | None:
                return authenticate(conn, token)

            key = await run_in_threadpool(context.read, look_up)
            if key is None:
                raise unauthorized()
            cache.put(token, key)
        if scope not in key.scopes:
            raise ProblemError(403, "forbidden", f"this API key does not hold the scope {scope}")
        return key

    return principal


def check_owner(key: ApiKey, owner: str, what: str) -> None:
    """Raise NotFound, worded as for a missing id, unless the key may see ``owner``'s things."""
    if key.owner is not None and key.owner != owner:
        raise NotFound(f"{what} not found")


def check_new_owner(key: ApiKey, owner: object) -> None:
    """An owner-scoped key writes for its own owner only; refuse, naming the field."""
    if key.owner is not None and owner != key.owner:
        raise InvalidInput("owner", f"this API key acts for {key.owner} only")
