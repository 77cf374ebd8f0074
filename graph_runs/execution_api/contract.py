"""The execution API's answers, checked against the contract before anything reads them.

The API is a peer, not a part of graph-runs: an answer off the contract (not JSON, a field
missing or of the wrong type, a cost that is not a finite, non-negative, bounded amount, a
run id that is not an id) must neither crash the caller nor reach the ledger, the receipts
or a URL. ``InvalidResponse`` carries a short, escaped excerpt of what came back; callers
record it as a failed outcome with the code ``invalid_response``.
"""

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, TypeVar

import pydantic

from graph_runs.core.text import bounded

# Bounds of what one graph run may report: far above any real run, far below what overflows
# a BIGINT of micro-dollars or tokens.
MAX_TOKENS = 10**12
MAX_COST_USD = Decimal(1_000_000)
MAX_MODEL_CHARS = 200
# The API's run ids go into a URL path: letters, digits and ``._:-``, 1 to 200 characters.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$")
EXCERPT_CHARS = 300
TERMINAL = ("succeeded", "failed")

Tokens = Annotated[int, pydantic.Field(ge=0, le=MAX_TOKENS, strict=True)]


class InvalidResponse(ValueError):
    """An answer that is not the contract's; the message says what and shows an excerpt."""


def _amount(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number or a decimal string")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError("is not a number") from None
    if not amount.is_finite() or amount < 0 or amount > MAX_COST_USD:
        raise ValueError(f"must be a finite amount from 0 to {MAX_COST_USD} USD")
    return amount


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")


class ApiUsage(_Model):
    """``usage``: tokens and cost of one run."""

    prompt_tokens: Tokens = 0
    completion_tokens: Tokens = 0
    total_tokens: Tokens = 0
    cost_usd: Annotated[Decimal, pydantic.BeforeValidator(_amount)] = Decimal(0)
    model: Annotated[str, pydantic.Field(max_length=MAX_MODEL_CHARS)] | None = None

    @pydantic.field_validator("prompt_tokens", "completion_tokens", "total_tokens", mode="before")
    @classmethod
    def _absent_is_zero(cls, value: Any) -> Any:
        return 0 if value is None else value


class ApiError(_Model):
    """``error``: what the API says went wrong; bounded and escaped when stored."""

    code: str | None = None
    message: str | None = None


def _run_id(value: Any) -> str:
    if not isinstance(value, str) or not RUN_ID_PATTERN.match(value):
        raise ValueError("must be an id of letters, digits and ._:- (1 to 200 characters)")
    return value


RunId = Annotated[str, pydantic.BeforeValidator(_run_id)]


class Terminal(_Model):
    """A 200 answer: the run's end."""

    status: Literal["succeeded", "failed"]
    run_id: RunId | None = None
    output: Any = None
    error: ApiError | None = None
    usage: ApiUsage | None = None


class Accepted(_Model):
    """A 202 answer: the run was accepted; poll ``run_id``."""

    run_id: RunId


class Polled(_Model):
    """A poll's 200 answer before it is known to be terminal."""

    status: Annotated[str, pydantic.Field(max_length=50)]


M = TypeVar("M", bound=_Model)


def excerpt(text: str) -> str:
    """The first characters of an answer, escaped, for an error message."""
    return bounded(text, EXCERPT_CHARS) or ""


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidResponse(f"the answer is not JSON: {excerpt(text)!r}") from None


def _check(model: type[M], text: str, what: str) -> M:
    payload = _json(text)
    try:
        return model.model_validate(payload)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "answer"
        raise InvalidResponse(
            f"{what} is not the contract's ({field}: {bounded(first['msg'], 200)}): "
            f"{excerpt(text)!r}"
        ) from None


def terminal(text: str) -> Terminal:
    """A 200 answer to a submission or a poll whose status is terminal."""
    return _check(Terminal, text, "the run's outcome")


def accepted(text: str) -> Accepted:
    """A 202 answer to a submission."""
    return _check(Accepted, text, "the accepted run")


def polled_status(text: str) -> str:
    """The status of a poll's 200 answer (terminal or not)."""
    return _check(Polled, text, "the polled run").status


def error_of(text: str) -> ApiError:
    """The ``error`` object of a refusal, or an empty one when the body has none usable."""
    try:
        payload = json.loads(text)
    except ValueError:
        return ApiError()
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return ApiError()
    code, message = error.get("code"), error.get("message")
    return ApiError(
        code=code if isinstance(code, str) else None,
        message=message if isinstance(message, str) else None,
    )
