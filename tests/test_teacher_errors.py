"""Failures are classified by SDK type and HTTP status, and typed errors carry their facts."""

from __future__ import annotations

import asyncio
import pickle
import socket

import pytest

from omniopd.errors import (BudgetExceededError, TeacherAuthError, TeacherCapabilityError, TeacherError,
                            TeacherQuotaError, TeacherResponseError, TeacherUnavailableError)
from providers.retry import RetryPolicy, call_with_retries
from tests.fake_providers import Fault, FakeProviderServer
from tests.test_providers_wire import SPECS, Clock, make, req


def _policy(clock: Clock, attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, deadline_s=300, clock=clock, sleep=clock.sleep)


def _attempts(exc: BaseException) -> tuple[int, BaseException | None]:
    calls = []

    async def fn():
        calls.append(1)
        raise exc

    try:
        asyncio.run(call_with_retries(fn, _policy(Clock()), what="anthropic:m"))
    except BaseException as got:  # noqa: BLE001
        return len(calls), got
    return len(calls), None


def test_a_permission_error_is_a_bug_not_an_outage():
    n, got = _attempts(PermissionError(13, "Permission denied"))
    assert n == 1 and type(got) is PermissionError  # no retries, no TeacherUnavailableError, no fallback


@pytest.mark.parametrize("exc", [FileNotFoundError(2, "nope"), IsADirectoryError(21, "dir"), KeyError("x"), ValueError("bug")])
def test_other_non_connection_errors_propagate_untouched(exc):
    n, got = _attempts(exc)
    assert n == 1 and got is exc


@pytest.mark.parametrize("exc", [ConnectionRefusedError(111, "refused"), ConnectionResetError(104, "reset"),
                                 TimeoutError("slow"), socket.gaierror(-2, "Name or service not known")])
def test_connection_level_os_errors_are_retried(exc):
    n, got = _attempts(exc)
    assert n == 4 and isinstance(got, TeacherUnavailableError) and got.provider == "anthropic" and got.status is None


FAULTS = [("quota", TeacherQuotaError, 429), ("unauthorized", TeacherAuthError, 401),
          ("capability", TeacherCapabilityError, 400)]


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
@pytest.mark.parametrize("kind,cls,status", FAULTS)
def test_sdk_errors_become_typed_errors_with_their_facts(provider, kind, cls, status):
    with FakeProviderServer() as srv:
        srv.push(Fault(kind, retry_after=7))
        t = make(srv, SPECS[provider])
        with pytest.raises(cls) as info:
            asyncio.run(t.sample(req()))
        assert len(srv.requests()) == 1  # not retried
    e = info.value
    assert (e.provider, e.status) == (provider, status)
    assert e.request_id and e.request_id.startswith("req_") and e.request_id in str(e)
    if kind == "quota":
        assert e.retry_after_s == pytest.approx(7, abs=1) or provider == "gemini"
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and back.facts() == e.facts() and str(back) == str(e)


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_outage_past_the_attempts_is_unavailable_with_status_and_retry_after(provider):
    with FakeProviderServer() as srv:
        srv.push(*[Fault("unavailable", retry_after=2)] * 3)
        t = make(srv, SPECS[provider], max_attempts=3)
        with pytest.raises(TeacherUnavailableError) as info:
            asyncio.run(t.sample(req()))
    e = info.value
    assert e.provider == provider and e.status == 503 and e.request_id
    assert "--teacher-deadline" in str(e)  # says what to do next


def test_unreachable_server_is_unavailable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    env = {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}", "ANTHROPIC_API_KEY": "k"}
    with FakeProviderServer() as srv:
        t = make(srv, SPECS["anthropic"], env=env, max_attempts=2)
        with pytest.raises(TeacherUnavailableError) as info:
            asyncio.run(t.sample(req()))
    assert info.value.provider == "anthropic" and info.value.status is None and "APIConnectionError" in str(info.value)


@pytest.mark.parametrize("cls", [TeacherError, TeacherUnavailableError, TeacherAuthError, TeacherQuotaError,
                                 TeacherCapabilityError, TeacherResponseError, BudgetExceededError])
def test_every_teacher_error_pickles_with_its_facts(cls):
    e = cls("what happened; what to do", provider="gemini", status=429, retry_after_s=1.5, request_id="r1")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e) and back.facts() == e.facts()
    assert (back.provider, back.status, back.retry_after_s, back.request_id) == ("gemini", 429, 1.5, "r1")
