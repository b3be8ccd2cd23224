"""The real anthropic, openai and google-genai SDKs against the fake wire server (tests/fake_providers.py).

Waits are observed through an injected sleep (no wall-clock assertions); the request log shows
what went over the wire and how many attempts were made.
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from omniopd.config import TeacherConfig
from omniopd.errors import (
    TeacherAuthError,
    TeacherCapabilityError,
    TeacherQuotaError,
    TeacherResponseError,
    TeacherUnavailableError,
)
from omniopd.teachers import build_api_teacher, build_api_teacher_with_fallback
from providers.base import Message, TeacherRequest
from providers.limits import LimitsRegistry
from providers.retry import RetryPolicy
from tests.fake_providers import Fault, FakeProviderServer, fake_server  # noqa: F401  (fixture)

ROUTE = {"anthropic": "anthropic", "openai": "chat", "gemini": "gemini", "openai-compatible": "chat"}
SPECS = {"anthropic": "anthropic:claude-haiku-4-5", "openai": "openai:gpt-4o-mini", "gemini": "gemini:gemini-2.5-flash"}


class Clock:
    """A fake monotonic clock whose sleep advances time instantly and records each wait."""

    def __init__(self) -> None:
        self.t = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        self.waits.append(d)
        self.t += d
        await asyncio.sleep(0)


def make(srv: FakeProviderServer, spec: str, clock: Clock | None = None, *, env=None, **cfg) -> object:
    clock = clock or Clock()
    tc = TeacherConfig(spec=spec, **cfg)
    policy = RetryPolicy(max_attempts=tc.max_attempts, deadline_s=tc.deadline_s, clock=clock, sleep=clock.sleep,
                         rng=random.Random(0))
    return build_api_teacher(tc, env=env if env is not None else srv.env(), limits=LimitsRegistry(), policy=policy)


def req(prefix: str = "The answer is ", n: int = 1, **kw) -> TeacherRequest:
    msgs = (Message("system", "Be brief."), Message("user", "What is 2+3?"))
    return TeacherRequest(msgs, prefix, n=n, max_tokens=kw.pop("max_tokens", 12), **kw)


def run(coro):
    return asyncio.run(coro)


async def sample_and_close(t, r):
    try:
        return await t.sample(r)
    finally:
        await t.aclose()


# --- request shapes -----------------------------------------------------------------------------
def test_anthropic_prefill_strips_trailing_whitespace_and_reconciles(fake_server):
    fake_server.responder = lambda route, body, i: " 5, because 2 plus 3 is 5."
    t = make(fake_server, "claude-haiku")
    samples = run(sample_and_close(t, req(temperature=0.7)))
    body = fake_server.requests("anthropic")[-1].body
    assert body["messages"][-1] == {"role": "assistant", "content": "The answer is"}
    assert body["system"] == "Be brief."
    assert "temperature" not in body and "top_p" not in body  # the table says: no sampling parameters
    (s,) = samples
    assert "The answer is " + s.text == "The answer is 5, because 2 plus 3 is 5."
    assert s.exact and s.teacher == "anthropic:claude-haiku-4-5" and s.model == "claude-haiku-4-5"
    assert s.cost_usd == pytest.approx((s.input_tokens * 1.0 + s.output_tokens * 5.0) / 1e6)


def test_newline_tail_is_reconciled(fake_server):
    fake_server.responder = lambda route, body, i: "\nStep 2: add."
    t = make(fake_server, "claude-haiku")
    (s,) = run(sample_and_close(t, req(prefix="Step 1: read.\n")))
    assert fake_server.requests()[-1].body["messages"][-1]["content"] == "Step 1: read."
    assert s.text == "Step 2: add."


def test_claude_46_uses_instruction_wrapper_and_strips_echo(fake_server):
    fake_server.responder = lambda route, body, i: "The answer is 5."
    t = make(fake_server, "anthropic:claude-sonnet-4-6")
    (s,) = run(sample_and_close(t, req()))
    last = fake_server.requests()[-1].body["messages"][-1]
    assert last["role"] == "user" and "The answer is" in last["content"] and "Continue it exactly" in last["content"]
    assert s.text == "5." and s.exact is False


def test_capability_400_is_typed_and_not_retried(fake_server):
    # Forcing prefill on a model that rejects it: the fake answers 400 like the real API.
    t = make(fake_server, "anthropic:claude-sonnet-4-6", continuation="prefill")
    with pytest.raises(TeacherCapabilityError, match="prefill"):
        run(sample_and_close(t, req()))
    assert len(fake_server.requests()) == 1
    fake_server.push(Fault("capability", route="chat"))
    t = make(fake_server, "openai:gpt-4o-mini")
    with pytest.raises(TeacherCapabilityError):
        run(sample_and_close(t, req(n=3)))
    assert len(fake_server.requests("chat")) == 1


def test_openai_n_bills_the_prompt_once(fake_server):
    t = make(fake_server, "openai:gpt-4o-mini")
    samples = run(sample_and_close(t, req(n=5, temperature=0.5)))
    (r,) = fake_server.requests("chat")
    assert r.body["n"] == 5 and r.body["temperature"] == 0.5 and r.body["max_completion_tokens"] == 12
    assert len(samples) == 5 and len({s.text for s in samples}) > 1
    prompt_tokens = sum(s.input_tokens for s in samples)
    assert all(s.input_tokens == pytest.approx(prompt_tokens / 5) for s in samples)
    assert all(not s.exact for s in samples)


def test_openai_reasoning_model_gets_no_temperature(fake_server):
    t = make(fake_server, "openai:gpt-5-mini")
    run(sample_and_close(t, req(n=2, temperature=0.3)))
    body = fake_server.requests("chat")[-1].body
    assert "temperature" not in body and body["reasoning_effort"] == "minimal"


def test_gemini_candidate_count_prefill_and_thinking_off(fake_server):
    t = make(fake_server, "gemini:gemini-2.5-flash")
    samples = run(sample_and_close(t, req(n=10)))
    reqs = fake_server.requests("gemini")
    counts = sorted(r.body["generationConfig"].get("candidateCount", 1) for r in reqs)
    assert counts == [2, 8] and len(samples) == 10
    body = reqs[0].body
    assert body["contents"][-1] == {"role": "model", "parts": [{"text": "The answer is"}]}
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}
    assert body["systemInstruction"]["parts"][0]["text"] == "Be brief."
    assert reqs[0].headers["x-goog-api-key"] == "gemini-test"


def test_anthropic_n_uses_prompt_caching_when_long_enough(fake_server):
    fake_server.min_cache_tokens = 100
    t = make(fake_server, "claude-haiku")
    t.caps = type(t.caps)(**{**t.caps.__dict__, "min_cache_tokens": 100})
    long_prompt = (Message("user", "Explain. " + "context " * 400),)
    samples = run(sample_and_close(t, TeacherRequest(long_prompt, "Well", n=4, max_tokens=8)))
    assert len(samples) == 4
    assert all("cache_control" in r.body["messages"][-1]["content"][0] for r in fake_server.requests())
    writes = [s for s in samples if s.cache_write_tokens > 0]
    reads = [s for s in samples if s.cache_read_tokens > 0]
    assert len(writes) == 1 and len(reads) == 3  # the first call wrote, the other three read
    assert sum(s.cost_usd for s in reads) < writes[0].cost_usd


# --- retries ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_sdk_itself_never_retries(fake_server, provider):
    fake_server.push(Fault("unavailable"))
    t = make(fake_server, SPECS[provider], max_attempts=1)
    with pytest.raises(TeacherUnavailableError):
        run(sample_and_close(t, req()))
    assert len(fake_server.requests()) == 1


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_429_retry_after_is_honoured(fake_server, provider):
    fake_server.push(Fault("rate_limit", retry_after=7))
    clock = Clock()
    t = make(fake_server, SPECS[provider], clock)
    samples = run(sample_and_close(t, req()))
    assert len(samples) == 1 and len(fake_server.requests()) == 2
    assert clock.waits and clock.waits[0] >= 7
    assert t.usage_totals()["retries"] == 1


def test_retry_after_ms_is_honoured(fake_server):
    fake_server.push(Fault("rate_limit", retry_after_ms=4500))
    clock = Clock()
    run(sample_and_close(make(fake_server, "openai:gpt-4o-mini", clock), req()))
    assert clock.waits[0] >= 4.5


def test_529_and_503_then_success(fake_server):
    fake_server.push(Fault("overloaded"), Fault("unavailable"))
    clock = Clock()
    t = make(fake_server, "claude-haiku", clock)
    samples = run(sample_and_close(t, req()))
    assert [r.status for r in fake_server.requests()] == [529, 503, 200]
    assert len(samples) == 1 and len(clock.waits) == 2


def test_timeout_is_retried(fake_server):
    fake_server.push(Fault("timeout", delay_s=3.0))
    t = make(fake_server, "openai:gpt-4o-mini", timeout_s=0.3)
    samples = run(sample_and_close(t, req(n=2)))
    assert len(samples) == 2 and len(fake_server.requests()) == 2


def test_malformed_json_is_retried_then_typed(fake_server):
    fake_server.push(Fault("malformed"))
    assert len(run(sample_and_close(make(fake_server, "claude-haiku"), req()))) == 1
    fake_server.push(*[Fault("malformed")] * 3)
    with pytest.raises(TeacherResponseError):
        run(sample_and_close(make(fake_server, "openai:gpt-4o-mini", max_attempts=3), req()))


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_quota_429_is_not_retried(fake_server, provider):
    fake_server.push(Fault("quota", retry_after=1))
    with pytest.raises(TeacherQuotaError):
        run(sample_and_close(make(fake_server, SPECS[provider]), req()))
    assert len(fake_server.requests()) == 1


def test_deadline_stops_retries_before_sleeping_past_it(fake_server):
    fake_server.push(*[Fault("rate_limit", retry_after=20)] * 5)
    clock = Clock()
    t = make(fake_server, "claude-haiku", clock, deadline_s=30)
    with pytest.raises(TeacherUnavailableError, match="deadline"):
        run(sample_and_close(t, req()))
    assert sum(clock.waits) <= 30 and len(fake_server.requests()) == 2


# --- fallback and keys ------------------------------------------------------------------------------
def _fallback_teacher(srv: FakeProviderServer):
    return make(srv, "openai-compatible:local-model", base_url=srv.url + "/v1")


def test_auth_error_falls_back_once_and_never_leaks_the_key(fake_server, caplog):
    fake_server.valid_keys = {"sk-ant-test", "no-key"}
    env = {**fake_server.env(), "ANTHROPIC_API_KEY": "sk-ant-WRONG-123456"}
    cfg = TeacherConfig(spec="claude-haiku", fallback="local:tiny")
    built = []
    teacher = build_api_teacher_with_fallback(cfg, None, lambda: built.append(1) or _fallback_teacher(fake_server),
                                              env=env, limits=LimitsRegistry())
    assert built == []  # the fallback is built only when needed

    async def go():
        a = await teacher.sample(req(n=2))
        b = await teacher.sample(req(n=2))
        await teacher.aclose()
        return a + b

    with caplog.at_level(logging.INFO, logger="omniopd.providers"):
        samples = run(go())
    assert len(samples) == 4 and {s.teacher for s in samples} == {"openai-compatible:local-model"}
    assert built == [1]
    switches = [r for r in caplog.records if "fallback teacher" in r.getMessage()]
    assert len(switches) == 1
    assert "sk-ant-WRONG-123456" not in caplog.text
    assert teacher.fell_back and "sk-ant-WRONG" not in teacher.fallback_reason
    assert teacher.identity()["provider"] == "openai-compatible"
    # n=2 is two parallel Anthropic calls; each 401 is final (no retries)
    assert 1 <= len(fake_server.requests("anthropic")) <= 2
    assert all(r.status == 401 for r in fake_server.requests("anthropic"))
    assert teacher.usage_totals()["primary"]["retries"] == 0
    totals = teacher.usage_totals()
    assert totals["fell_back"] and totals["fallback"]["samples"] == 4


def test_no_fallback_raises_auth_error(fake_server):
    fake_server.valid_keys = {"sk-ant-test"}
    env = {**fake_server.env(), "ANTHROPIC_API_KEY": "sk-ant-WRONG-123456"}
    cfg = TeacherConfig(spec="claude-haiku", no_fallback=True)
    teacher = build_api_teacher_with_fallback(cfg, None, lambda: pytest.fail("no fallback expected"), env=env,
                                              limits=LimitsRegistry())
    with pytest.raises(TeacherAuthError) as ei:
        run(sample_and_close(teacher, req()))
    assert "sk-ant-WRONG-123456" not in str(ei.value)


def test_missing_key_starts_on_fallback_without_calling_the_api(fake_server, caplog):
    env = {k: v for k, v in fake_server.env().items() if k != "ANTHROPIC_API_KEY"}
    with pytest.raises(TeacherAuthError, match="ANTHROPIC_API_KEY"):  # no silent self-distillation ...
        build_api_teacher_with_fallback(TeacherConfig(spec="claude-haiku"), None, lambda: pytest.fail("no fallback"), env=env)
    cfg = TeacherConfig(spec="claude-haiku", fallback="local:tiny")  # ... unless the user names the fallback
    with caplog.at_level(logging.WARNING, logger="omniopd.providers"):
        teacher = build_api_teacher_with_fallback(cfg, None, lambda: _fallback_teacher(fake_server), env=env)
        samples = run(sample_and_close(teacher, req(n=2)))
    assert "ANTHROPIC_API_KEY" in caplog.text
    assert fake_server.requests("anthropic") == [] and len(samples) == 2
    with pytest.raises(TeacherAuthError, match="ANTHROPIC_API_KEY"):
        build_api_teacher(TeacherConfig(spec="claude-haiku"), env=env)


def test_outage_past_deadline_falls_back(fake_server):
    fake_server.push(*[Fault("unavailable", route="anthropic")] * 50)
    clock = Clock()
    tc = TeacherConfig(spec="claude-haiku", deadline_s=10)
    policy = RetryPolicy(max_attempts=50, deadline_s=10, clock=clock, sleep=clock.sleep, rng=random.Random(0))
    teacher = build_api_teacher_with_fallback(tc, None, lambda: _fallback_teacher(fake_server), env=fake_server.env(),
                                              limits=LimitsRegistry(), policy=policy)
    samples = run(sample_and_close(teacher, req(n=1)))
    assert len(samples) == 1 and samples[0].teacher == "openai-compatible:local-model"
    assert sum(clock.waits) <= 10 and teacher.fell_back


def test_keys_stay_out_of_identity_and_repr(fake_server):
    t = make(fake_server, "claude-haiku")
    assert "sk-ant-test" not in repr(t) and "sk-ant-test" not in str(t.identity())
    assert t.identity()["endpoint"] == fake_server.url and t.identity()["continuation"] == "prefill"
    run(sample_and_close(t, req()))
    assert fake_server.requests()[-1].headers["anthropic-version"] == t.identity()["api_version"]


def test_cache_keys_fallback_samples_by_the_teacher_that_wrote_them(fake_server, tmp_path):
    from cache.store import SampleStore
    from cache.teacher import CachedTeacher, request_key

    fake_server.valid_keys = {"no-key"}  # the Anthropic key is rejected; the fallback server takes any
    env = {**fake_server.env(), "ANTHROPIC_API_KEY": "sk-ant-WRONG"}
    cfg = TeacherConfig(spec="claude-haiku", fallback="local:tiny")
    inner = build_api_teacher_with_fallback(cfg, None, lambda: _fallback_teacher(fake_server), env=env,
                                            limits=LimitsRegistry())
    api_identity = inner.identity()
    cached = CachedTeacher(inner, tmp_path / "teacher.sqlite", "read-write")
    r = req(n=2)
    samples = run(sample_and_close(cached, r))
    assert len(samples) == 2 and inner.fell_back
    with SampleStore(tmp_path / "teacher.sqlite", "read-only") as store:
        pools = store.get_many([request_key(api_identity, r), request_key(inner.identity(), r)])
    assert not pools.get(request_key(api_identity, r))  # nothing stored as Claude's
    assert len(pools[request_key(inner.identity(), r)]) == 2
