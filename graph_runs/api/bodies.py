"""A request's JSON body, held to the CLI's limits before any of it is acted on."""

import json
from typing import Any

from starlette.requests import Request

from graph_runs.api.problems import ProblemError
from graph_runs.core.schedule_spec import check_json
from graph_runs.http.bodies import body_within

MAX_BODY_BYTES = 64 * 1024
JSON_TYPES = ("application/json", "application/merge-patch+json")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object; a ProblemError (413, 415 or 400) for anything else.

    An empty body is ``{}`` where ``required`` is False (an action with nothing to say).
    """
    body = await body_within(request, MAX_BODY_BYTES)
    if body is None:
        raise ProblemError(413, "too_large", f"the body is over {MAX_BODY_BYTES} bytes")
    if not body.strip() and not required:
        return {}
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise ProblemError(
            415, "unsupported_media_type", f"Content-Type must be {' or '.join(JSON_TYPES)}"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProblemError(400, "invalid_input", "is not UTF-8", field="body") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProblemError(400, "invalid_input", "is nested too deep", field="body") from None
    except ValueError as exc:
        raise ProblemError(400, "invalid_input", f"is not JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise ProblemError(400, "invalid_input", "must be a JSON object", field="body")
    try:
        check_json(data)
    except ValueError as exc:
        raise ProblemError(400, "invalid_input", str(exc), field="body") from None
    return data


def only_fields(data: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse a field the operation does not know, naming it."""
    for name in data:
        if name not in allowed:
            raise ProblemError(
                400,
                "invalid_input",
                f"is not a field of this request ({', '.join(allowed)})",
                field=name,
            )
