"""The client side of the execution API contract (docs/execution-api.md).

Retries use bounded exponential backoff that honours ``Retry-After``; the request body is
built once per slot and never changes between attempts, because the server's idempotency
store compares bodies. Attempt number and Dagster run id travel in headers only. The clock
and the sleep are injectable so that tests never wait on the wall clock.
"""

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from graph_runs.core.text import MAX_ERROR_CODE, MAX_ERROR_MESSAGE, bounded
from graph_runs.execution_api import contract

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Usage:
    """What a run consumed, as the API reported it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    model: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "Usage | None":
        """Parse the contract's ``usage`` object."""
        if not data:
            return None
        return cls(
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            total_tokens=int(data.get("total_tokens") or 0),
            cost_usd=Decimal(str(data.get("cost_usd") or 0)),
            model=data.get("model"),
        )


@dataclass(frozen=True)
class Outcome:
    """A graph run's terminal outcome, or why none could be had."""

    status: str
    api_run_id: str | None = None
    output: Any = None
    error_code: str | None = None
    error_message: str | None = None
    usage: Usage | None = None
    attempts: int = 1

    def __post_init__(self) -> None:
        # Whatever made this outcome (the API, an exception, a row), what is stored of its
        # error is bounded and escaped: a 2.8 MB message or a faked line stops here.
        object.__setattr__(self, "error_code", bounded(self.error_code, MAX_ERROR_CODE))
        object.__setattr__(self, "error_message", bounded(self.error_message, MAX_ERROR_MESSAGE))

    @classmethod
    def from_terminal(cls, answer: contract.Terminal, attempts: int) -> "Outcome":
        """The outcome of a checked 200 answer."""
        error = answer.error or contract.ApiError()
        usage = answer.usage
        return cls(
            status=answer.status,
            api_run_id=answer.run_id,
            output=answer.output,
            error_code=error.code,
            error_message=error.message,
            usage=None
            if usage is None
            else Usage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
                cost_usd=usage.cost_usd,
                model=usage.model,
            ),
            attempts=attempts,
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (money as a string), to pass between ops."""
        usage = None
        if self.usage is not None:
            usage = {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
                "total_tokens": self.usage.total_tokens,
                "cost_usd": str(self.usage.cost_usd),
                "model": self.usage.model,
            }
        return {
            "status": self.status,
            "api_run_id": self.api_run_id,
            "output": self.output,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "usage": usage,
            "attempts": self.attempts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Outcome":
        """The inverse of ``as_dict``."""
        return cls(**{**data, "usage": Usage.from_json(data.get("usage"))})


class ExecutionApiError(Exception):
    """The API refused the request, or stayed unreachable through every retry.

    ``api_run_id`` is the API's run when the error came after the API accepted the run
    (polling timed out or failed): that run may still be going, and may still cost money.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        http_status: int | None,
        attempts: int,
        api_run_id: str | None = None,
    ) -> None:
        code = bounded(code, MAX_ERROR_CODE) or "unknown"
        message = bounded(message) or ""
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.attempts = attempts
        self.api_run_id = api_run_id

    def as_outcome(self) -> Outcome:
        """The failed outcome the ledger records for this error."""
        return Outcome(
            status="failed",
            api_run_id=self.api_run_id,
            error_code=self.code,
            error_message=self.message,
            attempts=self.attempts,
        )


@dataclass
class RetryPolicy:
    """Bounded exponential backoff."""

    max_attempts: int = 5
    base_seconds: float = 0.5
    max_seconds: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        backoff = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        if retry_after is not None:
            return min(self.max_seconds, max(backoff, retry_after))
        return backoff


def _retry_after(response: httpx.Response, now: float) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


@dataclass
class ExecutionApiClient:
    """Submits graph runs and waits for their outcome."""

    base_url: str
    token: str = field(repr=False)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    request_timeout_seconds: float = 30.0
    poll_interval_seconds: float = 2.0
    default_run_timeout_seconds: float = 3600.0
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    def run(
        self,
        *,
        graph_id: str,
        body: Mapping[str, Any],
        idempotency_key: str,
        dagster_run_id: str,
        timeout_seconds: float | None = None,
    ) -> Outcome:
        """Submit the run and wait for its terminal outcome.

        Raises:
            ExecutionApiError: on a non-retryable answer, on exhausted retries, or when the
                run is not terminal within ``timeout_seconds``.
        """
        try:
            outcome = self._run(graph_id, body, idempotency_key, dagster_run_id, timeout_seconds)
        except ExecutionApiError as exc:
            raise redact_error(exc, self.token) from None
        return redact_outcome(outcome, self.token)

    def _run(
        self,
        graph_id: str,
        body: Mapping[str, Any],
        idempotency_key: str,
        dagster_run_id: str,
        timeout_seconds: float | None,
    ) -> Outcome:
        deadline = self.clock() + (timeout_seconds or self.default_run_timeout_seconds)
        content = request_content(body)
        headers = request_headers(self.token, idempotency_key, dagster_run_id)
        url = runs_url(self.base_url, graph_id)
        with httpx.Client(transport=self.transport, timeout=self.request_timeout_seconds) as http:
            response, attempts = self._send(http, "POST", url, headers, content)
            run_id: str | None = None
            try:
                if response.status_code == 200:
                    return Outcome.from_terminal(contract.terminal(response.text), attempts)
                run_id = contract.accepted(response.text).run_id
                while True:
                    if self.clock() >= deadline:
                        raise not_terminal_in_time(run_id, attempts)
                    self.sleep(self.poll_interval_seconds)
                    response, polls = self._send(http, "GET", run_url(url, run_id), headers, None)
                    attempts += polls - 1
                    if response.status_code == 200 and is_terminal(response.text):
                        return Outcome.from_terminal(contract.terminal(response.text), attempts)
            except contract.InvalidResponse as exc:
                raise invalid_response(exc, attempts, run_id) from None

    def _send(
        self,
        http: httpx.Client,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
    ) -> tuple[httpx.Response, int]:
        """Send with retries; returns the first 200/202 answer and the attempts it took."""
        retrying = Retrying(self.retry, method, url, self.wall_clock)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = http.request(
                    method, url, headers={**headers, "X-Attempt": str(attempt)}, content=content
                )
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                delay = retrying.after_error(exc, attempt)
            else:
                answered = retrying.after_answer(response, attempt)
                if answered is None:
                    return response, attempt
                delay = answered
            self.sleep(delay)


@dataclass
class Retrying:
    """The retry decisions of one request, shared by this client and the concurrent caller.

    Each attempt's answer (or transport error) is judged here: a usable answer (200, 202)
    ends the loop, a refusal raises at once, anything else is retried after the policy's
    delay (honouring ``Retry-After``) until the attempts run out.
    """

    policy: RetryPolicy
    method: str
    url: str
    wall_clock: Callable[[], float]
    api_run_id: str | None = None
    last_problem: str = ""
    last_status: int | None = None

    def after_answer(self, response: httpx.Response, attempt: int) -> float | None:
        """None for a usable answer; else the seconds to wait before the next attempt."""
        if response.status_code in (200, 202):
            return None
        self.last_status = response.status_code
        if response.status_code not in RETRYABLE_STATUS:
            raise _refusal(response, attempt, self.api_run_id)
        self.last_problem = f"HTTP {response.status_code}"
        return self._delay(attempt, _retry_after(response, self.wall_clock()))

    def after_error(self, exc: Exception, attempt: int) -> float:
        """The seconds to wait after a timeout or a transport error.

        Only the error's type is kept: the text of an httpx error can quote the request,
        headers included, and what is kept here is stored, logged and shown.
        """
        self.last_problem, self.last_status = type(exc).__name__, None
        return self._delay(attempt, None)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if attempt >= self.policy.max_attempts:
            raise ExecutionApiError(
                "api_unavailable",
                f"execution API still failing after {self.policy.max_attempts} attempts: "
                f"{self.last_problem}",
                http_status=self.last_status,
                attempts=self.policy.max_attempts,
                api_run_id=self.api_run_id,
            )
        delay = self.policy.delay(attempt, retry_after)
        logger.warning(
            "execution API %s %s: %s; retrying in %.1f s",
            self.method,
            self.url,
            self.last_problem,
            delay,
        )
        return delay


REDACTED = "[redacted]"
# Shorter tokens (test tokens, say) are not searched for: taking every "t" out of a message
# would destroy it and protect nothing.
MIN_REDACTED_CHARS = 8


def _secret(token: str) -> str | None:
    secret = token.strip()
    return secret if len(secret) >= MIN_REDACTED_CHARS else None


def _without(text: str | None, secret: str) -> str | None:
    return text.replace(secret, REDACTED) if text else text


def _json_without(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, list):
        return [_json_without(item, secret) for item in value]
    if isinstance(value, dict):
        return {
            _json_without(key, secret): _json_without(item, secret) for key, item in value.items()
        }
    return value


def redact_outcome(outcome: Outcome, token: str) -> Outcome:
    """The outcome with the token taken out of every text the API sent.

    An API that echoes the request (its Authorization header included) into an error message
    or an output would otherwise have the token stored in the ledger, logged and shown.
    """
    secret = _secret(token)
    if secret is None:
        return outcome
    return dataclasses.replace(
        outcome,
        error_code=_without(outcome.error_code, secret),
        error_message=_without(outcome.error_message, secret),
        output=_json_without(outcome.output, secret),
    )


def redact_error(error: "ExecutionApiError", token: str) -> "ExecutionApiError":
    """The error with the token taken out of its code and message (see ``redact_outcome``)."""
    secret = _secret(token)
    if secret is None or (secret not in error.code and secret not in error.message):
        return error
    return ExecutionApiError(
        _without(error.code, secret) or "unknown",
        _without(error.message, secret) or "",
        http_status=error.http_status,
        attempts=error.attempts,
        api_run_id=error.api_run_id,
    )


TOKEN_VAR = "GRAPH_RUNS_EXECUTION_API_TOKEN"
_TOKEN = re.compile(r"^[\x21-\x7e]+$")


def token_problem(token: str) -> str | None:
    """What makes ``token`` unusable in a header, naming its variable and never its value.

    Surrounding whitespace (a secret mounted from a file ends in a newline) is not a
    problem: it is stripped.
    """
    if not _TOKEN.match(token.strip()):
        return (
            f"{TOKEN_VAR} must be printable ASCII without spaces (surrounding whitespace "
            "is stripped)"
        )
    return None


def authorization(token: str) -> str:
    """The Authorization header's value.

    Raises:
        ExecutionApiError: ``invalid_token``, naming the variable and not the value.
    """
    problem = token_problem(token)
    if problem is not None:
        raise ExecutionApiError("invalid_token", problem, http_status=None, attempts=0)
    return f"Bearer {token.strip()}"


def _refusal(response: httpx.Response, attempt: int, api_run_id: str | None) -> ExecutionApiError:
    """The error for an answer that is not retried (400, 401, 403, 404, 409, 422)."""
    error = contract.error_of(response.text)
    code = error.code or f"http_{response.status_code}"
    message = error.message or contract.excerpt(response.text) or f"HTTP {response.status_code}"
    return ExecutionApiError(
        code, message, http_status=response.status_code, attempts=attempt, api_run_id=api_run_id
    )


def request_content(body: Mapping[str, Any]) -> bytes:
    """The request body, byte for byte the same on every attempt.

    The API's idempotency store compares bodies.
    """
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def request_headers(token: str, idempotency_key: str, dagster_run_id: str) -> dict[str, str]:
    """The headers of every request of one call (the attempt number is added per send)."""
    return {
        "Authorization": authorization(token),
        "Idempotency-Key": idempotency_key,
        "X-Dagster-Run-Id": dagster_run_id,
        "Content-Type": "application/json",
    }


def not_terminal_in_time(run_id: str, attempts: int) -> ExecutionApiError:
    """The error of a run still going at its deadline; it keeps the run id to resume."""
    return ExecutionApiError(
        "timeout",
        f"run {run_id} was not terminal within the timeout",
        http_status=None,
        attempts=attempts,
        api_run_id=run_id,
    )


def _segment(value: str) -> str:
    """``value`` as exactly one path segment.

    Slashes are escaped, and so are ``.`` and ``..``, which a client or a proxy would
    otherwise resolve against the path before them.
    """
    segment = quote(value, safe="")
    return "%2E" * len(segment) if segment in (".", "..") else segment


def runs_url(base_url: str, graph_id: str) -> str:
    """The submission URL of ``graph_id``."""
    return f"{base_url.rstrip('/')}/api/internal/graphs/{_segment(graph_id)}/runs"


def run_url(runs: str, run_id: str) -> str:
    """The poll URL of an API run (whose id the contract checked)."""
    return f"{runs}/{_segment(run_id)}"


def is_terminal(text: str) -> bool:
    """Whether a poll's 200 answer says the run ended.

    An answer off the contract is not trusted to end anything and is polled again, so an
    API run that still runs is never given up on for one bad answer. A terminal answer is
    then checked in full.
    """
    try:
        return contract.polled_status(text) in contract.TERMINAL
    except contract.InvalidResponse as exc:
        logger.warning("polling: %s; polling again", exc)
        return False


def invalid_response(
    exc: contract.InvalidResponse, attempts: int, api_run_id: str | None
) -> ExecutionApiError:
    """An answer off the contract, as the error a caller records: code ``invalid_response``.

    The error carries no ``api_run_id`` (which would mean "still running, poll it again"):
    a terminal answer that fails its check ended the run, and the API will not answer
    differently. Its id, if known, is named in the message.
    """
    where = f"run {api_run_id}: " if api_run_id else ""
    return ExecutionApiError(
        "invalid_response", f"{where}{exc}", http_status=None, attempts=attempts
    )
