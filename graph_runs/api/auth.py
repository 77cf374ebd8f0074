"""Who is asking: the bearer key, its scope and its owner.

Every answer to a missing, unknown or revoked key is the same 401, so that a guess learns
nothing. An owner-scoped key asking for another owner's schedule, grant, slot or approval
gets the same 404 as for an id that does not exist.
"""

from collections.abc import Callable

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from graph_runs.access.api_keys import ApiKey, authenticate
from graph_runs.api.context import ApiContext, api_context
from graph_runs.api.problems import ProblemError
from graph_runs.core.errors import InvalidInput, NotFound

UNAUTHORIZED = ProblemError(
    401,
    "unauthorized",
    "give a live API key as `Authorization: Bearer <key>`",
    headers={"WWW-Authenticate": "Bearer"},
)
MAX_TOKEN = 200


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
            raise UNAUTHORIZED

        def look_up() -> ApiKey | None:
            with context.engine.connect() as conn:
                return authenticate(conn, token)

        key = await run_in_threadpool(look_up)
        if key is None:
            raise UNAUTHORIZED
        if scope not in key.scopes:
            raise ProblemError(403, "forbidden", f"this API key does not hold the scope {scope}")
        return key

    return principal


def owner_for(key: ApiKey, owner: str | None) -> str | None:
    """The owner a list is held to: the key's own, or what an app key asks for."""
    return key.owner if key.owner is not None else owner


def check_owner(key: ApiKey, owner: str, what: str) -> None:
    """Raise NotFound, worded as for a missing id, unless the key may see ``owner``'s things."""
    if key.owner is not None and key.owner != owner:
        raise NotFound(f"{what} not found")


def check_new_owner(key: ApiKey, owner: object) -> None:
    """An owner-scoped key writes for its own owner only; refuse, naming the field."""
    if key.owner is not None and owner != key.owner:
        raise InvalidInput("owner", f"this API key acts for {key.owner} only")
