"""The real anthropic, openai and google-genai SDKs against tests/fake_batches.py: each provider's
batch client creates, polls, reads results (per-item errors, expiry) and cancels over the wire."""

from __future__ import annotations

import asyncio
import random

import pytest

from omniopd.config import TeacherConfig
from omniopd.errors import TeacherError
from omniopd.solutions import solution_request
from omniopd.teachers import build_api_teacher
from providers.batch_base import BATCH_DISCOUNT, BatchItem, batch_client_for
from providers.limits import LimitsRegistry
from providers.retry import RetryPolicy
from tests.fake_batches import FakeBatchServer

SPECS = {"anthropic": "anthropic:claude-haiku-4-5", "openai": "openai:gpt-4o-mini", "gemini": "gemini:gemini-2.5-flash"}
PROMPTS = [[{"role": "user", "content": f"What is {i} + 2?"}] for i in range(3)]


async def _noop(_: float) -> None:
    await asyncio.sleep(0)


def client(srv: FakeBatchServer, provider: str):
    cfg = TeacherConfig(spec=SPECS[provider], max_attempts=2, deadline_s=5)
    policy = RetryPolicy(max_attempts=2, deadline_s=5, sleep=_noop, rng=random.Random(0))
    return batch_client_for(build_api_teacher(cfg, env=srv.env(), limits=LimitsRegistry(), policy=policy))


def items(provider: str, n: int = 2) -> list[BatchItem]:
    k = 1 if provider == "anthropic" else n
    reps = n if provider == "anthropic" else 1
    out = []
    for i, p in enumerate(PROMPTS):
        req = solution_request(p, n=n, max_tokens=16)
        out += [BatchItem(f"p{i}s{j}", req, k) for j in range(reps)]
    return out


async def _poll_until_ended(c, bid: str, limit: int = 10):
    for _ in range(limit):
        st = await c.status(bid)
        if st.ended:
            return st
    raise AssertionError("batch never ended")


@pytest.mark.parametrize("provider", list(SPECS))
def test_create_poll_results_over_the_wire(provider):
    with FakeBatchServer(end_after_polls=2) as srv:
        c = client(srv, provider)

        async def go():
            its = items(provider)
            bid = await c.create(its, tag="job1")
            first = await c.status(bid)
            assert not first.ended
            st = await _poll_until_ended(c, bid)
            res = await c.results(bid, its)
            await c.aclose()
            return its, bid, st, res

        its, bid, st, res = asyncio.run(go())
    assert srv.created(provider) == 1
    assert st.ended and [r.custom_id for r in res] == [it.custom_id for it in its]
    assert all(r.status == "succeeded" for r in res)
    assert sum(len(r.samples) for r in res) == 2 * len(PROMPTS)
    for r in res:
        for s in r.samples:
            assert s.text and s.teacher == SPECS[provider] and s.extra["batch"] == bid
            assert s.cost_usd > 0
        # billed at half the live price card
        caps = c.teacher.caps
        assert r.cost_usd == pytest.approx(caps.cost_usd(r.input_tokens, r.output_tokens) * BATCH_DISCOUNT)
        assert sum(s.cost_usd for s in r.samples) == pytest.approx(r.cost_usd)


@pytest.mark.parametrize("provider", list(SPECS))
def test_per_item_errors_are_reported_per_item(provider):
    with FakeBatchServer(outcome=lambda p, cid: "error" if cid.startswith("p1") else "ok") as srv:
        c = client(srv, provider)

        async def go():
            its = items(provider)
            bid = await c.create(its, tag="job2")
            await _poll_until_ended(c, bid)
            return await c.results(bid, its)

        res = asyncio.run(go())
    bad = [r for r in res if r.custom_id.startswith("p1")]
    assert bad and all(r.status == "errored" and r.error and not r.samples and r.cost_usd == 0 for r in bad)
    assert all(r.status == "succeeded" for r in res if not r.custom_id.startswith("p1"))


@pytest.mark.parametrize("provider", list(SPECS))
def test_expired_batch_items_come_back_expired(provider):
    with FakeBatchServer(expire_batches=True) as srv:
        c = client(srv, provider)

        async def go():
            its = items(provider)
            bid = await c.create(its, tag="job3")
            await _poll_until_ended(c, bid)
            return await c.results(bid, its)

        res = asyncio.run(go())
    assert res and all(r.status == "expired" and not r.samples for r in res)


@pytest.mark.parametrize("provider", list(SPECS))
def test_cancel_ends_the_batch_with_canceled_items(provider):
    with FakeBatchServer(hold=True) as srv:
        c = client(srv, provider)

        async def go():
            its = items(provider)
            bid = await c.create(its, tag="job4")
            await c.cancel(bid)
            st = await _poll_until_ended(c, bid)
            return st, await c.results(bid, its)

        st, res = asyncio.run(go())
    assert srv.requests("POST", "cancel")
    assert st.ended and all(r.status == "canceled" for r in res)


@pytest.mark.parametrize("provider", list(SPECS))
def test_unknown_batch_is_a_typed_error_with_its_facts(provider):
    with FakeBatchServer() as srv:
        c = client(srv, provider)
        bid = {"anthropic": "msgbatch_nope", "openai": "batch_nope", "gemini": "batches/nope"}[provider]
        with pytest.raises(TeacherError) as ei:
            asyncio.run(c.status(bid))
    e = ei.value
    assert e.provider == provider and e.batch_id == bid and e.status == 404
    assert bid in str(e)
