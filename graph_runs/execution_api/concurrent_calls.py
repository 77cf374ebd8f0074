"""Many graph runs at once through one async HTTP client: the dispatch run's caller.

A run that fires a batch of slots calls the execution API for each of them concurrently,
within two bounds: ``max_concurrent`` calls in all, and ``max_per_account`` per billing
account, so that one tenant's thousands of slots at 09:00 neither starve the others nor
flood the API. A call waits for its account's turn before it takes a place in the global
bound, so a tenant over its cap holds no place another tenant could use.

Each call keeps the contract of ``execution_client``: the same idempotency key and the same
body on every attempt, bounded exponential backoff that honours ``Retry-After``, and no
retry of a refusal. A call whose run was accepted (202) but whose polling timed out or
failed keeps the API's run id: a later call with ``api_run_id`` set resumes polling that
run instead of submitting again, so an API run that still runs is never given up on.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from graph_runs.execution_api import contract
from graph_runs.execution_api.client import (
    ExecutionApiError,
    Outcome,
    Retrying,
    RetryPolicy,
    invalid_response,
    is_terminal,
    not_terminal_in_time,
    redact_error,
    redact_outcome,
    request_content,
    request_headers,
    run_url,
    runs_url,
)


@dataclass(frozen=True)
class Call:
    """One graph run to obtain: submit it, or resume polling the API run it already has."""

    idempotency_key: str
    graph_id: str
    body: Mapping[str, Any]
    billing_account: str | None = None
    timeout_seconds: float | None = None
    api_run_id: str | None = None


@dataclass(frozen=True)
class Result:
    """A call's terminal outcome, or the error that ended it (with the API run id, if any)."""

    call: Call
    outcome: Outcome | None = None
    error: ExecutionApiError | None = None
    # A poll the API answered, saying the run has not ended (or that it has no such run);
    # False when it could not be asked (a timeout, a reset, a 5xx, an answer off the contract).
    answered: bool = False


@dataclass
class ConcurrentCaller:
    """Calls the execution API for many graph runs at once, within per-account bounds."""

    base_url: str
    token: str = field(repr=False)
    max_concurrent: int = 50
    max_per_account: int = 10
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    request_timeout_seconds: float = 30.0
    poll_interval_seconds: float = 2.0
    default_run_timeout_seconds: float = 3600.0
    transport: httpx.AsyncBaseTransport | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time

    @asynccontextmanager
    async def session(self, *, dagster_run_id: str) -> AsyncIterator["CallSession"]:
        """One HTTP client and one pair of bounds, for calls that arrive over time."""
        limits = httpx.Limits(
            max_connections=self.max_concurrent, max_keepalive_connections=self.max_concurrent
        )
        async with httpx.AsyncClient(
            transport=self.transport, timeout=self.request_timeout_seconds, limits=limits
        ) as http:
            yield CallSession(self, http, dagster_run_id)

    async def run(self, calls: Iterable[Call], *, dagster_run_id: str) -> AsyncIterator[Result]:
        """Make every call; yield each result as soon as its call ends, in finishing order."""
        async with self.session(dagster_run_id=dagster_run_id) as session:
            for finished in asyncio.as_completed([session.call(call) for call in calls]):
                yield await finished

    async def poll_once(self, calls: Sequence[Call], *, dagster_run_id: str) -> list[Result]:
        """One poll of each call's API run, concurrently; in the order of ``calls``.

        A run the API says ended gets its outcome; any other answer (still going, a 5xx, a
        timeout, off the contract) gets neither outcome nor error: poll it again later.
        ``answered`` tells the API's own "not ended" (202) or "no such run" (404) from a
        poll that could not ask it.
        No retries here: the next poll is the retry, so a slow API costs one request each.
        A call whose API run id is not known (its run died before the answer came back) is
        submitted again under its key and body instead: the API answers with the run it
        has, whose id comes back as the error ``handed_off``, or its outcome if it ended.
        """
        limits = httpx.Limits(
            max_connections=self.max_concurrent, max_keepalive_connections=self.max_concurrent
        )
        bound = asyncio.Semaphore(self.max_concurrent)
        async with httpx.AsyncClient(
            transport=self.transport, timeout=self.request_timeout_seconds, limits=limits
        ) as http:

            async def poll(call: Call) -> Result:
                headers = request_headers(self.token, call.idempotency_key, dagster_run_id)
                url = runs_url(self.base_url, call.graph_id)
                async with bound:
                    try:
                        if call.api_run_id is None:
                            response = await http.post(
                                url,
                                headers={**headers, "X-Attempt": "1"},
                                content=request_content(call.body),
                            )
                            if response.status_code == 202:
                                run_id = contract.accepted(response.text).run_id
                                return Result(call, error=handed_off(run_id, 1))
                        else:
                            response = await http.get(
                                run_url(url, call.api_run_id),
                                headers={**headers, "X-Attempt": "1"},
                            )
                        if response.status_code == 200 and is_terminal(response.text):
                            outcome = Outcome.from_terminal(contract.terminal(response.text), 1)
                            return Result(call, outcome=redact_outcome(outcome, self.token))
                        if response.status_code in (202, 404):
                            return Result(call, answered=True)
                    except (httpx.TimeoutException, httpx.TransportError, ValueError):
                        pass
                return Result(call)

            return list(await asyncio.gather(*(poll(call) for call in calls)))

    async def _obtain(
        self,
        http: httpx.AsyncClient,
        call: Call,
        dagster_run_id: str,
        handing_off: Callable[[], bool] = lambda: False,
    ) -> Outcome:
        deadline = self.clock() + (call.timeout_seconds or self.default_run_timeout_seconds)
        headers = request_headers(self.token, call.idempotency_key, dagster_run_id)
        url = runs_url(self.base_url, call.graph_id)
        attempts = 0
        run_id = call.api_run_id
        try:
            if run_id is None:
                content = request_content(call.body)
                response, attempts = await self._send(http, "POST", url, headers, content, None)
                if response.status_code == 200:
                    return Outcome.from_terminal(contract.terminal(response.text), attempts)
                run_id = contract.accepted(response.text).run_id
            while True:
                if self.clock() >= deadline:
                    raise not_terminal_in_time(run_id, attempts)
                if handing_off():
                    raise handed_off(run_id, attempts)
                if attempts:  # a resumed call polls at once; a new one waits after submitting
                    await self.sleep(self.poll_interval_seconds)
                    if handing_off():
                        raise handed_off(run_id, attempts)
                response, polls = await self._send(
                    http, "GET", run_url(url, run_id), headers, None, run_id
                )
                attempts += polls
                if response.status_code == 200 and is_terminal(response.text):
                    return Outcome.from_terminal(contract.terminal(response.text), attempts)
        except contract.InvalidResponse as exc:
            raise invalid_response(exc, attempts, run_id) from None

    async def _send(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        headers: dict[str, str],
        content: bytes | None,
        api_run_id: str | None,
    ) -> tuple[httpx.Response, int]:
        """Send with retries; returns the first 200/202 answer and the attempts it took."""
        retrying = Retrying(self.retry, method, url, self.wall_clock, api_run_id)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await http.request(
                    method, url, headers={**headers, "X-Attempt": str(attempt)}, content=content
                )
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                delay = retrying.after_error(exc, attempt)
            else:
                answered = retrying.after_answer(response, attempt)
                if answered is None:
                    return response, attempt
                delay = answered
            await self.sleep(delay)


class CallSession:
    """Calls made through one caller's client, within its global and per-account bounds."""

    def __init__(self, caller: ConcurrentCaller, http: httpx.AsyncClient, dagster_run_id: str):
        self._caller = caller
        self._http = http
        self._dagster_run_id = dagster_run_id
        self._total = asyncio.Semaphore(caller.max_concurrent)
        self._accounts: dict[str | None, asyncio.Semaphore] = {}
        self._hand_off_at: float | None = None

    def hand_off_in(self, seconds: float) -> None:
        """``seconds`` from now (the caller's clock), accepted API runs stop being polled.

        Each such call ends at its next poll as the error ``handed_off`` with the API run
        id: whoever polls next (the sensor) resumes that run. A call not yet accepted is
        still submitted first.
        """
        self._hand_off_at = self._caller.clock() + seconds

    def _handing_off(self) -> bool:
        return self._hand_off_at is not None and self._caller.clock() >= self._hand_off_at

    async def call(self, call: Call) -> Result:
        """Make one call; never raises for the API's answers, only for cancellation."""
        account = self._accounts.setdefault(
            call.billing_account, asyncio.Semaphore(self._caller.max_per_account)
        )
        async with account, self._total:
            try:
                outcome = await self._caller._obtain(
                    self._http, call, self._dagster_run_id, self._handing_off
                )
            except ExecutionApiError as exc:
                return Result(call, error=redact_error(exc, self._caller.token))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # Off the contract in a way the checks did not name: this call ends, no other.
                return Result(call, error=_malformed(exc))
        return Result(call, outcome=redact_outcome(outcome, self._caller.token))


HANDED_OFF = "handed_off"


def handed_off(run_id: str, attempts: int) -> ExecutionApiError:
    """The error of a call that stopped polling its accepted run for another to resume."""
    return ExecutionApiError(
        HANDED_OFF,
        f"run {run_id} is still going; handed off to be polled later",
        http_status=None,
        attempts=attempts,
        api_run_id=run_id,
    )


def _malformed(exc: Exception) -> ExecutionApiError:
    return ExecutionApiError(
        "invalid_response",
        f"the execution API's answer is not the contract's: {type(exc).__name__}",
        http_status=None,
        attempts=1,
    )
