"""RFC 9457 problem answers: every error the API gives, one shape, never a trace or SQL."""

from typing import Any

import pydantic
from fastapi.responses import JSONResponse

PROBLEM_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:graph-runs:problem:"
# Over a database outage: a client retries after this many seconds.
RETRY_AFTER_SECONDS = 5

TITLES = {
    "invalid_input": "The request is not valid",
    "unauthorized": "Missing, unknown or revoked API key",
    "forbidden": "The API key lacks the scope",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "conflict": "The request conflicts with what is stored",
    "idempotency_key_in_use": "A request with this Idempotency-Key is still being processed",
    "idempotency_key_reused": "This Idempotency-Key was used with another request",
    "precondition_failed": "The schedule changed since it was read",
    "precondition_required": "If-Match is required",
    "too_large": "The body is too large",
    "unsupported_media_type": "The body must be JSON",
    "unavailable": "The database is unavailable",
    "internal": "Internal error",
}


class Problem(pydantic.BaseModel):
    """An error answer (RFC 9457), with the field it is about when there is one."""

    model_config = pydantic.ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:graph-runs:problem:invalid_input",
                    "title": "The request is not valid",
                    "status": 400,
                    "detail": "cron: '61 * * * *' is not a valid cron expression",
                    "code": "invalid_input",
                    "field": "cron",
                }
            ]
        }
    )

    type: str
    title: str
    status: int
    detail: str
    code: str
    field: str | None = None


class ProblemError(Exception):
    """Raised anywhere in a request: the handler answers with this problem."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.headers = headers or {}


def problem_body(status: int, code: str, detail: str, field: str | None = None) -> dict[str, Any]:
    """The JSON of a problem."""
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + code,
        "title": TITLES[code],
        "status": status,
        "detail": detail,
        "code": code,
    }
    if field is not None:
        body["field"] = field
    return body


def problem_response(error: ProblemError) -> JSONResponse:
    """The answer for ``error``."""
    return JSONResponse(
        problem_body(error.status, error.code, error.detail, error.field),
        status_code=error.status,
        headers=error.headers,
        media_type=PROBLEM_TYPE,
    )


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers an operation documents, each a Problem."""
    described = {
        400: "Bad input: the field is named",
        401: "Missing, unknown or revoked API key",
        403: "The key lacks the scope",
        404: "Not found, or not this key's owner's",
        409: "Conflict, or an Idempotency-Key still in use",
        412: "If-Match does not match the schedule's ETag",
        413: "The body is over 64 KiB",
        415: "The body is not JSON",
        422: "The Idempotency-Key was used with another request",
        428: "If-Match is required",
        503: "The database is unavailable; retry after Retry-After",
    }
    common = (400, 401, 403, 404, 503)
    return {
        status: {
            "model": Problem,
            "description": described[status],
            "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in sorted(set(common + statuses))
    }
