"""The management API's app: routes, problem answers for every error, health, OpenAPI.

No error escapes as a trace: domain errors become 4xx problems naming the field, a database
that cannot be reached becomes 503 with Retry-After, and anything else one fixed 500 whose
log line names the exception's class only (its text may hold SQL or a value).
"""

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from graph_runs.api.auth import KeyCache
from graph_runs.api.context import ApiContext
from graph_runs.api.idempotency import Idempotency
from graph_runs.api.models import Health
from graph_runs.api.problems import (
    PROBLEM_TYPE,
    RETRY_AFTER_SECONDS,
    ProblemError,
    problem_body,
    problem_response,
)
from graph_runs.api.routes import actions, billing, grants, schedules
from graph_runs.core.errors import Conflict, InvalidInput, NotFound
from graph_runs.core.schedule_spec import ScheduleLimits
from graph_runs.store.db import SchemaError, check_schema

log = logging.getLogger(__name__)

VERSION = "1.0.0"
DESCRIPTION = """\
Users' schedules of AI graph runs, fired exactly once per slot, over HTTP.

Authenticate with `Authorization: Bearer <key>`; keys come from `graph-runs api-keys create`.
Errors are RFC 9457 problems (`application/problem+json`) naming the field at fault. Every
POST takes an `Idempotency-Key`. PATCH and PUT of a schedule need the `If-Match` of a GET.
Times are RFC 3339 in UTC; money is a decimal string in USD.
"""
UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError, SchemaError)


def _unavailable() -> ProblemError:
    return ProblemError(
        503,
        "unavailable",
        "the schedules database cannot be reached; retry",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _problem_of(exc: Exception) -> ProblemError | None:
    """The problem a known exception is, or None for a bug."""
    if isinstance(exc, ProblemError):
        return exc
    if isinstance(exc, InvalidInput):
        return ProblemError(400, "invalid_input", exc.message, field=exc.field)
    if isinstance(exc, NotFound):
        return ProblemError(404, "not_found", str(exc))
    if isinstance(exc, Conflict):
        return ProblemError(409, "conflict", str(exc))
    if isinstance(exc, UNAVAILABLE):
        return _unavailable()
    return None


class Contained:
    """ASGI middleware: any exception becomes its problem, and a bug one fixed 500.

    Starlette's own error handling re-raises after answering, so that the server logs the
    trace; a trace holds the SQL and values of the failed statement, which must not reach a
    log line.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request; answer for it if it raised before answering."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - the boundary where no error may pass
            problem = _problem_of(exc)
            if problem is None:
                log.error("%s %s failed: %s", scope["method"], scope["path"], type(exc).__name__)
                problem = ProblemError(500, "internal", "an internal error; it was logged")
            elif problem.status == 503:
                log.warning("%s %s: database unavailable", scope["method"], scope["path"])
            if not started:
                await problem_response(problem)(scope, receive, send)


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title="graph-runs management API",
            version=VERSION,
            description=DESCRIPTION,
            routes=app.routes,
        )
        schema["components"]["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key"}
        }
        schema["security"] = [{"apiKey": []}]
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                if path in ("/healthz", "/readyz"):
                    operation["security"] = []
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if PROBLEM_TYPE in content:
                        content.pop("application/json", None)
                    if status == "422" and "Problem" not in str(content):
                        # FastAPI's own validation answer, which this API never gives: its
                        # bad input is a 400 problem naming the field.
                        operation["responses"].pop(status)
                        break
        app.openapi_schema = schema
        return schema

    return build


def create_app(
    engine: sa.Engine,
    *,
    clock: Callable[[], dt.datetime],
    limits: ScheduleLimits,
    dagster_ui_url: str | None = None,
    idempotency_wait_seconds: float = 5.0,
    dispose_engine: bool = False,
) -> FastAPI:
    """The API on ``engine``; ``clock`` stamps every write (tests pass their own).

    With ``dispose_engine``, the app's shutdown closes ``engine`` too (a server that made it).
    """
    context = ApiContext(engine, clock, limits, dagster_ui_url, idempotency_wait_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        context.dispose()
        if dispose_engine:
            engine.dispose()

    app = FastAPI(
        title="graph-runs management API",
        version=VERSION,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.context = context
    app.state.idempotency = Idempotency(context)
    app.state.keys = KeyCache(clock)
    for module in (schedules, actions, grants, billing):
        app.include_router(module.router)

    async def problem_handler(_: Request, exc: Exception) -> JSONResponse:
        problem = _problem_of(exc)
        assert problem is not None
        return problem_response(problem)

    for error in (ProblemError, InvalidInput, NotFound, Conflict, *UNAVAILABLE):
        app.add_exception_handler(error, problem_handler)

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header")]
        field = ".".join(loc) or "request"
        message = str(first.get("msg", "is not valid")).removeprefix("Value error, ")
        return problem_response(ProblemError(400, "invalid_input", message, field=field))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_input")
        status = exc.status_code if exc.status_code in (404, 405) else 400
        return JSONResponse(
            problem_body(status, code, str(exc.detail)),
            status_code=status,
            media_type=PROBLEM_TYPE,
            headers=getattr(exc, "headers", None),
        )

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)

    @app.get(
        "/healthz",
        operation_id="healthz",
        summary="Liveness: the process answers",
        response_model=Health,
        tags=["health"],
    )
    async def healthz() -> JSONResponse:
        """Answers without touching the database."""
        return JSONResponse({"ok": True, "problems": []})

    @app.get(
        "/readyz",
        operation_id="readyz",
        summary="Readiness: the database answers and its schema is this code's",
        response_model=Health,
        responses={503: {"model": Health, "description": "Not ready, and why"}},
        tags=["health"],
    )
    async def readyz() -> JSONResponse:
        """503 names what is wrong: the database unreachable, or its schema not at head."""

        def check() -> list[str]:
            try:
                context.read(lambda conn: conn.exec_driver_sql("SELECT 1"))
            except UNAVAILABLE:
                return ["the schedules database cannot be reached"]
            try:
                check_schema(engine)
            except SchemaError as exc:
                # Its first clause: the rest names revisions and the fix, for operators.
                return [str(exc).split(":")[0]]
            except UNAVAILABLE:
                return ["the schedules database cannot be reached"]
            return []

        problems = await run_in_threadpool(check)
        return JSONResponse(
            {"ok": not problems, "problems": problems},
            status_code=503 if problems else 200,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)} if problems else None,
        )

    app.openapi = _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(Contained)
    return app
