"""Teacher answers are checked in one place, the same on every API: wire tests on all three.

Empty text and missing content are not samples; output longer than the request allows (by
the reported tokens, or by the byte bound) is rejected. Rejected answers are counted as failed
samples and never reach the cache.
"""

from __future__ import annotations

import asyncio

import pytest

from cache.store import SampleStore
from cache.teacher import CachedTeacher
from omniopd.errors import TeacherResponseError
from providers.base import Message, TeacherRequest
from providers.validation import MAX_BYTES_PER_TOKEN, call_rejection, rejection
from tests.fake_providers import Fault, FakeProviderServer
from tests.test_providers_wire import SPECS, make

MAX_TOKENS = 13


def _req(n: int = 1) -> TeacherRequest:
    return TeacherRequest((Message("user", "What is 2+3?"),), "The answer is", n=n, max_tokens=MAX_TOKENS)


def _run(srv: FakeProviderServer, provider: str, tmp_path, n: int = 1):
    """Sample through a CachedTeacher; returns (samples or the error, the teacher's totals, samples stored)."""
    teacher = make(srv, SPECS[provider])
    cached = CachedTeacher(teacher, tmp_path / "cache.sqlite")

    async def go():
        try:
            return await cached.sample(_req(n))
        except TeacherResponseError as exc:
            return exc
        finally:
            await cached.aclose()

    got = asyncio.run(go())
    with SampleStore(tmp_path / "cache.sqlite", "read-only") as store:
        stored = store.stats()["samples"]
    return got, teacher.usage_totals(), stored


def test_the_rules_as_pure_functions():
    assert rejection("", 5) and rejection(None, 5) and rejection("ok", 5) is None
    assert rejection("x" * (MAX_BYTES_PER_TOKEN * 5), 5) is None and rejection("x" * (MAX_BYTES_PER_TOKEN * 5 + 1), 5)
    assert call_rejection(10, 2, 5) is None and call_rejection(11, 2, 5)


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
@pytest.mark.parametrize("fault", ["empty", "no_choices"])
def test_empty_or_missing_content_is_not_a_sample(provider, fault, tmp_path):
    with FakeProviderServer() as srv:
        srv.push(Fault(fault))
        got, totals, stored = _run(srv, provider, tmp_path)
    assert isinstance(got, TeacherResponseError) and got.provider == provider
    assert totals["failed_samples"] == 1 and totals["samples"] == 0 and stored == 0


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_an_empty_answer_among_good_ones_is_dropped(provider, tmp_path):
    with FakeProviderServer() as srv:
        srv.push(Fault("empty"))  # the first call's answers are empty, later calls are fine
        got, totals, stored = _run(srv, provider, tmp_path, n=3)
    if provider == "anthropic":  # one call per sample: 1 of 3 empty
        assert len(got) == 2 and totals["failed_samples"] == 1 and stored == 2
    else:  # n / candidate_count: the one call held all three
        assert isinstance(got, TeacherResponseError) and totals["failed_samples"] == 3 and stored == 0
    assert all(s.text for s in (got if isinstance(got, list) else []))


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_a_5_mb_continuation_of_a_13_token_request_is_rejected(provider, tmp_path):
    with FakeProviderServer(responder=lambda route, body, i: "x" * 5_000_000) as srv:  # 1 "token" on the wire
        got, totals, stored = _run(srv, provider, tmp_path)
    assert isinstance(got, TeacherResponseError) and "bytes" in str(got)
    assert totals["failed_samples"] == 1 and stored == 0


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_more_tokens_than_max_tokens_is_rejected(provider, tmp_path):
    with FakeProviderServer(responder=lambda route, body, i: " w" * 100) as srv:  # reports 100 output tokens
        got, totals, stored = _run(srv, provider, tmp_path)
    assert isinstance(got, TeacherResponseError) and "output tokens" in str(got)
    assert totals["failed_samples"] == 1 and stored == 0
