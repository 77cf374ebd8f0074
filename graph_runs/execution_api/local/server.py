"""A Starlette app that implements the execution API contract with the demo graphs.

It keeps its own idempotency store, keyed by Idempotency-Key and compared by request hash:
the same key with the same body returns the first outcome and never executes twice; the same
key with another body is a 409. ``executions`` counts graph executions, so tests can prove
that something ran once. With a ``request_log``, each submission's arrival (wall clock and
key) and each execution is written as a JSON line, for benchmarks that time a dispatch from
outside the process that serves it.
"""

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from graph_runs.execution_api.local import graphs


@dataclass
class _Run:
    run_id: str
    graph_id: str
    payload: dict[str, Any]
    finishes_at: float


@dataclass
class ExecutionStore:
    """Runs and idempotency keys, shared by every request the server handles."""

    clock: Callable[[], float] = time.monotonic
    runs: dict[str, _Run] = field(default_factory=dict)
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)
    flaky_seen: dict[str, int] = field(default_factory=dict)
    # The API's own grant re-check: grant id -> the error code it answers 403 with. The local
    # server keeps no grants of its own, so a test (or a demo) says which ones it refuses.
    refused_grants: dict[str, str] = field(default_factory=dict)
    refusals: int = 0
    executions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    request_log: TextIO | None = None

    def log(self, **entry: Any) -> None:
        """Append one JSON line to the request log, if there is one; call with ``lock`` held."""
        if self.request_log is not None:
            self.request_log.write(json.dumps(entry) + "\n")
            self.request_log.flush()

    def view(self, run: _Run) -> tuple[int, dict[str, Any]]:
        """The contract's answer for ``run`` now: 200 terminal or 202 running."""
        if self.clock() < run.finishes_at:
            return 202, {"run_id": run.run_id, "status": "running"}
        result = graphs.finish(run.graph_id, run.payload)
        return 200, {
            "run_id": run.run_id,
            "status": result.status,
            "output": result.output,
            "error": result.error,
            "usage": graphs.usage_for(run.payload),
        }


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def create_app(token: str, store: ExecutionStore | None = None) -> Starlette:
    """Build the app; requests must carry ``Authorization: Bearer {token}``."""
    store = store or ExecutionStore()
    expected = f"Bearer {token}".encode()

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, expected)

    async def submit(request: Request) -> JSONResponse:
        if not authorized(request):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        graph_id = request.path_params["graph_id"]
        key = request.headers.get("idempotency-key")
        with store.lock:
            store.log(arrived=time.time(), key=key)
        if not key:
            return _error(400, "idempotency_key_missing", "the Idempotency-Key header is required")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "bad_json", "the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _error(422, "invalid_body", "the body needs an object `input`")
        if not isinstance(body.get("grant_id"), str) or not isinstance(body.get("trigger"), dict):
            return _error(422, "invalid_body", "the body needs `grant_id` and `trigger`")
        if graph_id not in graphs.GRAPHS:
            return _error(404, "graph_not_found", f"no graph {graph_id!r}")
        with store.lock:
            refused = store.refused_grants.get(body["grant_id"])
            if refused is not None:
                store.refusals += 1
        if refused is not None:
            return _error(403, refused, f"grant {body['grant_id']} refused: {refused}")
        digest = hashlib.sha256(
            json.dumps({"graph": graph_id, "body": body}, sort_keys=True).encode()
        ).hexdigest()
        with store.lock:
            known = store.keys.get(key)
            if known is not None:
                if known[0] != digest:
                    return _error(
                        409, "idempotency_conflict", "this key was used with another body"
                    )
                status, answer = store.view(store.runs[known[1]])
                return JSONResponse(answer, status)
            payload = body["input"]
            if graph_id == "flaky":
                seen = store.flaky_seen.get(key, 0)
                if seen < graphs.flaky_failures(payload):
                    store.flaky_seen[key] = seen + 1
                    return _error(
                        503, "unavailable", "flaky graph says: try again", {"Retry-After": "0"}
                    )
            duration = graphs.sleep_seconds(payload) if graph_id == "sleep" else 0.0
            run = _Run(f"apirun_{uuid.uuid4().hex}", graph_id, payload, store.clock() + duration)
            store.runs[run.run_id] = run
            store.keys[key] = (digest, run.run_id)
            store.executions += 1
            store.log(executed=key)
            status, answer = store.view(run)
        if status == 202:
            answer["status"] = "queued"
        return JSONResponse(answer, status)

    async def poll(request: Request) -> JSONResponse:
        if not authorized(request):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        with store.lock:
            run = store.runs.get(request.path_params["run_id"])
            if run is None or run.graph_id != request.path_params["graph_id"]:
                return _error(404, "run_not_found", "no such run")
            status, answer = store.view(run)
        return JSONResponse(answer, status)

    app = Starlette(
        routes=[
            Route("/api/internal/graphs/{graph_id}/runs", submit, methods=["POST"]),
            Route("/api/internal/graphs/{graph_id}/runs/{run_id}", poll, methods=["GET"]),
        ]
    )
    app.state.store = store
    return app
