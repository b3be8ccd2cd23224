"""Retries for teacher calls: what is retried, how long to wait, when to give up.

The SDKs' own retries are off (`max_retries=0`; google-genai gets no `retry_options`), so this
module is the only place a request is repeated. Policy (DESIGN §3):

- retried: connection errors, timeouts, malformed responses, HTTP 408, 409, 429 (rate limits),
  5xx and 529 (overloaded);
- never retried, raised as typed errors: 401/403 -> `TeacherAuthError`, 402 and quota or
  spend-limit 429s -> `TeacherQuotaError`, other 4xx -> `TeacherCapabilityError`;
- wait = max(server's `retry-after-ms` / `retry-after` / Gemini `retryDelay`, jittered
  exponential backoff), with an attempt cap and a deadline; a wait that would cross the
  deadline ends the retries at once (`TeacherUnavailableError`) instead of sleeping past it.

Errors are classified by each SDK's exception types — anthropic's and openai's
`APIStatusError` / `APIConnectionError` / `APIResponseValidationError`, google-genai's
`errors.APIError` / `UnknownApiResponseError`, httpx's `HTTPStatusError` / `TransportError` —
and by HTTP status; of the plain `OSError`s only connection-level ones (`ConnectionError`,
`TimeoutError`, DNS failures) are retried. Anything else is a bug and propagates untouched, so a
`PermissionError` is a traceback, not five minutes of retries and a switch to the fallback.
Typed errors carry their facts (`provider`, `status`, `retry_after_s`, `request_id`) and say what
to do next; they are raised `from None` because an SDK error's text can echo part of a key,
while their facts are kept as attributes. Every message is passed through `redact` with the
client's key before it leaves this module. Clock,
sleep and random source are injectable so tests observe the waits without waiting on a wall clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import functools
import importlib
import json
import random
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Literal, TypeVar

import tenacity

from omniopd.errors import (
    TeacherAuthError,
    TeacherCapabilityError,
    TeacherError,
    TeacherQuotaError,
    TeacherResponseError,
    TeacherUnavailableError,
)

T = TypeVar("T")
Kind = Literal["retry", "auth", "quota", "capability", "response"]

RETRY_STATUS = frozenset({408, 409, 429, 529})
# A 429 that waiting will not fix: exhausted quota, spend or credit limits, daily caps.
_QUOTA_RE = re.compile(r"insufficient_quota|spend[ _-]?limit|credit balance|billing_hard_limit|quota_exceeded|PerDay", re.I)


@dataclass(frozen=True)
class Failure:
    """A classified failure: `kind` decides retry vs typed error; `retry_after_s` is the server's hint."""

    kind: Kind
    message: str
    status: int | None = None
    retry_after_s: float | None = None
    request_id: str | None = None

    @property
    def retryable(self) -> bool:
        return self.kind in ("retry", "response")


class MalformedResponse(Exception):
    """Raised by a client when a response parsed but lacks what the API promises (retried)."""


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every non-empty secret in `text` with `***`."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP date); None if absent."""
    if headers is None:
        return None
    get = headers.get
    ms = get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = get("retry-after")
    if ra:
        try:
            return max(0.0, float(ra))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(ra)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None


def _gemini_retry_delay(body: Any) -> float | None:
    """Gemini puts the wait in `error.details[].retryDelay` ("12s") instead of a header."""
    try:
        details = body["error"]["details"]
    except (KeyError, TypeError):
        return None
    for d in details if isinstance(details, list) else []:
        delay = d.get("retryDelay") if isinstance(d, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None


def classify_status(status: int, headers: Any, body: Any, text: str) -> Failure:
    """Classify an HTTP error answer by status code, body and headers."""
    retry_after = parse_retry_after(headers)
    if retry_after is None:
        retry_after = _gemini_retry_delay(body)
    blob = text if isinstance(body, str) or body is None else json.dumps(body, default=str)
    if status in (401, 403):
        return Failure("auth", f"HTTP {status}: the API key was rejected ({text}). Set a valid key for this provider "
                       "in its environment variable (see README, Teachers over APIs), or choose another --teacher.", status)
    if status == 402 or (status == 429 and _QUOTA_RE.search(blob or "")):
        return Failure("quota", f"HTTP {status}: the account's quota or spend limit is exhausted ({text}); waiting will "
                       "not help. Raise the limit with the provider, or choose another --teacher.", status, retry_after)
    if status in RETRY_STATUS or status >= 500:
        return Failure("retry", f"HTTP {status}: {text}", status, retry_after)
    return Failure("capability", f"HTTP {status}: the model rejected the request ({text}). Try "
                   "--teacher-continuation instruct, drop --teacher-temperature, or choose another --teacher.", status)


# OSErrors that mean "the network or the server went away": worth another attempt. Every
# other OSError (PermissionError, FileNotFoundError, ...) is a bug or a local problem and
# propagates at once with its traceback.
_CONNECTION_OS_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, socket.gaierror, socket.herror)


@functools.lru_cache(maxsize=1)
def _sdk_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(HTTP status errors, connection errors, invalid-response errors) of the installed SDKs.

    Imported on first use (never at import time); an SDK that is not installed contributes
    nothing. anthropic and openai wrap every transport failure in `APIConnectionError`
    (`APITimeoutError` is a subclass); google-genai lets httpx's `TransportError`s through.
    """
    status: list[type] = []
    conn: list[type] = []
    invalid: list[type] = []
    for name in ("anthropic", "openai"):
        try:
            sdk = importlib.import_module(name)
        except ImportError:  # pragma: no cover - both are dependencies
            continue
        status.append(sdk.APIStatusError)
        conn.append(sdk.APIConnectionError)
        invalid.append(sdk.APIResponseValidationError)
    try:
        from google.genai import errors as genai_errors

        status.append(genai_errors.APIError)
        invalid.append(genai_errors.UnknownApiResponseError)
    except ImportError:  # pragma: no cover
        pass
    import httpx

    status.append(httpx.HTTPStatusError)
    conn.append(httpx.TransportError)
    return tuple(status), tuple(conn), tuple(invalid)


def _status_of(exc: BaseException) -> int | None:
    for attr in ("status_code", "code"):  # anthropic/openai: status_code; google.genai: code
        v = getattr(exc, attr, None)
        if isinstance(v, int) and v >= 100:
            return v
    v = getattr(getattr(exc, "response", None), "status_code", None)  # httpx.HTTPStatusError
    return v if isinstance(v, int) else None


def request_id_of(exc: BaseException) -> str | None:
    """The provider's id of the failed request: the SDK's `request_id`, else a response header."""
    rid = getattr(exc, "request_id", None)
    if isinstance(rid, str) and rid:
        return rid
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None:
        for name in ("request-id", "x-request-id", "x-goog-request-id"):
            v = headers.get(name)
            if v:
                return str(v)
    return None


def classify(exc: BaseException) -> Failure | None:
    """Classify an exception from a supported SDK or transport, by type and HTTP status.

    None means "not a teacher failure": a bug, which propagates with its traceback.
    """
    if isinstance(exc, TeacherError):
        return None
    if isinstance(exc, MalformedResponse):
        return Failure("response", f"malformed response: {exc}")
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return Failure("response", f"malformed JSON from the server: {exc}")
    status_errors, connection_errors, invalid_errors = _sdk_errors()
    if isinstance(exc, status_errors):
        status = _status_of(exc)
        if status is not None:
            body = getattr(exc, "body", None)
            if body is None:
                body = getattr(exc, "details", None)
            message = getattr(exc, "message", None) or str(exc)
            f = classify_status(status, getattr(getattr(exc, "response", None), "headers", None), body, str(message)[:500])
            return dataclasses.replace(f, request_id=request_id_of(exc))
    name = type(exc).__name__
    if isinstance(exc, invalid_errors):
        return Failure("response", f"malformed response ({name}): {str(exc)[:300]}", request_id=request_id_of(exc))
    if isinstance(exc, connection_errors) or isinstance(exc, _CONNECTION_OS_ERRORS):
        timed_out = "Timeout" in name or isinstance(exc, TimeoutError)
        return Failure("retry", f"request timed out ({name})" if timed_out else f"could not reach the server ({name}: {str(exc)[:200]})")
    return None


_TYPED = {
    "auth": TeacherAuthError,
    "quota": TeacherQuotaError,
    "capability": TeacherCapabilityError,
}


@dataclass
class RetryPolicy:
    """Attempt cap, deadline and backoff shape (base * 2**k, capped, full jitter on top)."""

    max_attempts: int = 8
    deadline_s: float = 300.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    rng: random.Random | None = None

    def backoff(self, attempt: int) -> float:
        """Jittered exponential wait after `attempt` failures (attempt >= 1)."""
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        r = (self.rng or random).random()
        return cap * (0.5 + 0.5 * r)


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
    secrets: Iterable[str | None] = (),
    on_retry: Callable[[Failure, float], None] | None = None,
    provider: str | None = None,
) -> T:
    """Run `fn` until it succeeds, a non-retryable failure occurs, or attempts/deadline run out.

    Raises `TeacherAuthError`/`TeacherQuotaError`/`TeacherCapabilityError` at once,
    `TeacherUnavailableError` (or `TeacherResponseError` if the last failure was a malformed
    answer) when retries are exhausted, each with `provider` (default: `what` up to its first
    ':'), `status`, `retry_after_s` and `request_id`. `what` names the call in messages
    ("anthropic:claude-…"). Exceptions `classify` does not know propagate untouched.
    """
    secrets = tuple(secrets)
    provider = provider or what.partition(":")[0] or None
    start = policy.clock()
    last: dict[str, Failure] = {}

    def failure_of(rs: tenacity.RetryCallState) -> Failure | None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        return classify(exc) if exc is not None else None

    def should_retry(rs: tenacity.RetryCallState) -> bool:
        f = failure_of(rs)
        if f is None:
            return False
        last["f"] = f
        return f.retryable

    def wait(rs: tenacity.RetryCallState) -> float:
        f = last["f"]
        return max(f.retry_after_s or 0.0, policy.backoff(rs.attempt_number))

    def stop(rs: tenacity.RetryCallState) -> bool:
        if rs.attempt_number >= policy.max_attempts:
            return True
        return policy.clock() - start + rs.upcoming_sleep > policy.deadline_s

    def before_sleep(rs: tenacity.RetryCallState) -> None:
        if on_retry is not None:
            on_retry(last["f"], rs.upcoming_sleep)

    retrying = tenacity.AsyncRetrying(
        retry=should_retry, wait=wait, stop=stop, sleep=policy.sleep, before_sleep=before_sleep, reraise=True
    )
    try:
        return await retrying(fn)
    except TeacherError:
        raise
    except Exception as exc:
        f = classify(exc)
        if f is None:
            raise
        msg = redact(f"{what}: {f.message}", secrets)
        if f.request_id:
            msg += f" (request id {f.request_id})"
        facts = dict(provider=provider, status=f.status, retry_after_s=f.retry_after_s, request_id=f.request_id)
        if not f.retryable:
            raise _TYPED[f.kind](msg, **facts) from None
        n = retrying.statistics.get("attempt_number", 1)
        tail = f"gave up after {n} attempt(s) within the {policy.deadline_s:g} s deadline"
        if f.kind == "response":
            raise TeacherResponseError(f"{msg}; {tail}. The server keeps answering with unusable data: check "
                                       "--teacher-base-url, or choose another --teacher.", **facts) from None
        raise TeacherUnavailableError(
            f"{msg}; {tail}. Check the service status or raise --teacher-deadline / --teacher-max-attempts.", **facts
        ) from None
