"""Pure parts of providers/: capability table, error classification, prefix text, rate limiting."""

from __future__ import annotations

import asyncio

import pytest

from omniopd.config import TeacherConfig
from omniopd.errors import ConfigError
from omniopd.teachers import ALIASES, build_api_teacher, canonical_spec, parse_spec
from providers.capabilities import TABLE, lookup
from providers.continuation import reconcile, split_prefix, strip_echo
from providers.limits import Limits, TokenBucket
from providers.retry import classify_status, parse_retry_after, redact


# --- capability table ----------------------------------------------------------------------------
def test_table_rows_by_model():
    haiku = lookup("anthropic", "claude-haiku-4-5-20251001")  # dated snapshot matches its family
    assert haiku.continuation == "prefill" and haiku.max_n == 1 and not haiku.accepts_temperature
    assert haiku.min_cache_tokens == 4096 and haiku.prices_date
    assert lookup("anthropic", "claude-sonnet-4-6").continuation == "instruct"
    assert lookup("anthropic", "claude-future-9").continuation == "instruct"  # unknown: conservative default
    assert lookup("openai", "gpt-4o-mini").max_n > 1 and lookup("openai", "gpt-4o-mini").accepts_temperature
    assert not lookup("openai", "gpt-5-mini").accepts_temperature
    assert lookup("gemini", "gemini-2.5-flash-lite").thinking == "budget0"
    assert lookup("gemini", "gemini-3-pro-preview").continuation == "instruct"
    compat = lookup("openai-compatible", "anything")
    assert compat.max_n == 1 and compat.continuation == "instruct" and not compat.priced


def test_every_provider_has_a_default_row_last():
    for provider in {r.provider for r in TABLE}:
        rows = [r for r in TABLE if r.provider == provider]
        assert rows[-1].pattern == "*"


def test_cost_uses_cache_rates():
    haiku = lookup("anthropic", "claude-haiku-4-5")
    assert haiku.cost_usd(1e6, 0) == pytest.approx(1.0)
    assert haiku.cost_usd(0, 1e6) == pytest.approx(5.0)
    assert haiku.cost_usd(0, 0, cache_read=1e6) == pytest.approx(0.1)
    assert haiku.cost_usd(0, 0, cache_write=1e6) == pytest.approx(1.25)
    assert lookup("openai-compatible", "x").cost_usd(1e6, 1e6) == 0.0


def test_aliases_and_specs():
    assert canonical_spec("claude-haiku") == "anthropic:claude-haiku-4-5"
    assert all(parse_spec(v) for v in ALIASES.values())
    with pytest.raises(ConfigError, match="claude-haiku"):
        parse_spec("claude-hiaku")
    with pytest.raises(ConfigError, match="teacher-base-url"):
        build_api_teacher(TeacherConfig(spec="openai-compatible:m"), env={})
    with pytest.raises(ConfigError, match="only openai-compatible"):
        build_api_teacher(TeacherConfig(spec="claude-haiku", continuation="raw"), env={"ANTHROPIC_API_KEY": "k"})


# --- error classification ------------------------------------------------------------------------
@pytest.mark.parametrize("status,body,kind", [
    (429, {"error": {"type": "rate_limit_error"}}, "retry"),
    (429, {"error": {"code": "insufficient_quota"}}, "quota"),
    (429, {"error": {"status": "RESOURCE_EXHAUSTED", "details": [{"violations": [{"quotaId": "RequestsPerDayPerProject"}]}]}}, "quota"),
    (402, {}, "quota"),
    (401, {}, "auth"),
    (403, {}, "auth"),
    (400, {"error": {"type": "invalid_request_error"}}, "capability"),
    (404, {}, "capability"),
    (408, {}, "retry"),
    (409, {}, "retry"),
    (500, {}, "retry"),
    (503, {}, "retry"),
    (529, {}, "retry"),
])
def test_classify_status(status, body, kind):
    assert classify_status(status, {}, body, "msg").kind == kind


def test_retry_after_sources():
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert parse_retry_after({}) is None
    gem = {"error": {"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]}}
    assert classify_status(429, {}, gem, "m").retry_after_s == 12.0


def test_redact():
    assert redact("key sk-123 leaked", ["sk-123", None, ""]) == "key *** leaked"


# --- prefix hygiene ------------------------------------------------------------------------------
def test_split_and_reconcile():
    sp = split_prefix("The answer is \n")
    assert (sp.sent, sp.tail) == ("The answer is", " \n")
    assert reconcile(sp.tail, " \n5") == "5"
    assert reconcile(sp.tail, " 5") == "5"  # other whitespace: the caller's prefix already has its own
    assert reconcile(sp.tail, "5") == "5"
    assert reconcile("", " 5") == " 5"  # nothing held back: the text is untouched


def test_strip_echo():
    p = "First we add 2 and 3"
    assert strip_echo(p, p + " to get 5.") == " to get 5."
    assert strip_echo(p, "we add 2 and 3 to get 5.") == " to get 5."  # echo of the prefix's tail
    assert strip_echo(p, "<partial_answer>\n" + p + " to get 5.") == " to get 5."
    assert strip_echo(p, " to get 5.") == " to get 5."
    assert strip_echo(p, "3 more") == "3 more"  # too short an overlap to call it an echo


# --- limits ----------------------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    async def sleep(self, d):
        self.t += d
        await asyncio.sleep(0)


def test_token_bucket_paces_requests():
    clock = Clock()
    bucket = TokenBucket(2.0, burst=1, clock=clock, sleep=clock.sleep)

    async def go():
        times = []
        for _ in range(5):
            await bucket.acquire()
            times.append(clock.t)
        return times

    assert asyncio.run(go()) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


def test_limits_cap_concurrency_and_rate():
    clock = Clock()
    lim = Limits(concurrency=2, rpm=120, clock=clock, sleep=clock.sleep)  # 2 requests/s
    inflight, peak, admitted = 0, 0, []

    async def one():
        nonlocal inflight, peak
        async with lim.admit(10):
            inflight += 1
            peak = max(peak, inflight)
            admitted.append(clock.t)
            await asyncio.sleep(0)
            inflight -= 1

    async def go():
        await asyncio.gather(*(one() for _ in range(9)))

    asyncio.run(go())
    assert peak <= 2
    # burst of 2, then one every 0.5 s: 9 admissions need 3.5 s of clock time
    assert max(admitted) == pytest.approx(3.5)


def test_limits_work_across_event_loops():
    lim = Limits(concurrency=1, rpm=None)

    async def one():
        async with lim.admit():
            return 1

    assert asyncio.run(one()) == 1 and asyncio.run(one()) == 1


def test_tokens_per_minute_limit_paces_by_estimated_tokens():
    clock = Clock()
    lim = Limits(concurrency=8, rpm=None, tpm=600, clock=clock, sleep=clock.sleep)  # 10 tokens/s, burst 10

    async def go():
        times = []
        for _ in range(4):
            async with lim.admit(est_tokens=10):
                times.append(clock.t)
        return times

    assert asyncio.run(go()) == pytest.approx([0.0, 1.0, 2.0, 3.0])
