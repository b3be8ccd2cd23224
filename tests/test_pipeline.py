"""Pipeline.audit on real rollouts of a tiny model, with a scripted teacher behind the Teacher protocol."""

import math

import pytest
import torch

from omniopd.errors import BudgetExceededError, TeacherAuthError, TeacherUnavailableError
from omniopd.pipeline import Pipeline, advantages_B_T, ChunkAudit
from omniopd.rollouts import generate_rollouts
from omniopd.similarity import build_similarity
from providers.base import TeacherSample
from scheduler import ForkScheduler


class ScriptedTeacher:
    """Answers each request by calling `script(request) -> list[str]` (or raising what it returns)."""

    spec = "scripted"

    def __init__(self, script, cost=0.0):
        self.script, self.cost, self.requests = script, cost, []

    async def sample(self, request):
        self.requests.append(request)
        out = self.script(request)
        if isinstance(out, BaseException):
            raise out
        return [TeacherSample(text=t, teacher=self.spec, cost_usd=self.cost) for t in out]

    def identity(self):
        return {"provider": "scripted"}

    async def aclose(self):
        pass


@pytest.fixture
def rollouts(tiny_model, tiny_tok):
    torch.manual_seed(0)
    prompts = [[{"role": "user", "content": "Tom has 3 apples"}]] * 3
    return generate_rollouts(tiny_model, tiny_tok, prompts, max_new_tokens=30)


def _pipeline(teacher, tok, **kw):
    return Pipeline(teacher, tok, ForkScheduler(chunk_tokens=5, chunks_per_completion=2), build_similarity("edit"),
                    samples=4, alpha=1.0, **kw)


def test_teacher_agreeing_exactly_gives_k_equal_n(rollouts, tiny_tok):
    # The teacher "continues" with exactly the student's chunk: phi = 1 for every sample.
    comp = rollouts.completion_ids.tolist()

    def echo_chunk(req):
        for row in comp:
            for s in range(len(row) - 4):
                if tiny_tok.decode(row[:s], skip_special_tokens=True) == req.prefix:
                    return [tiny_tok.decode(row[s:s + 5], skip_special_tokens=True)] * req.n
        raise AssertionError("prefix not found")

    teacher = ScriptedTeacher(echo_chunk)
    p = _pipeline(teacher, tiny_tok)
    res = p.audit(rollouts, step=0)
    p.close()
    assert res.chunks, "the tiny model's completions are long enough to audit"
    assert all(r.n == 4 and r.max_tokens == math.ceil(1.3 * 5) for r in teacher.requests)
    for c in res.chunks:
        assert sum(c.phi) == pytest.approx(4.0)
        assert c.pihat == pytest.approx((4 + c.pibar) / 5)
        lp = rollouts.logprobs_B_T[c.row, c.start:c.start + 5]
        assert c.pibar == pytest.approx(float(lp.mean().exp()), rel=1e-5)
        assert res.advantages_B_T[c.row, c.start:c.start + 5].tolist() == pytest.approx([c.pihat] * 5)
    assert res.metrics["forks"] == len(res.chunks)
    assert res.metrics["teacher_samples"] == 4 * len(res.chunks)
    assert res.metrics["audited_tokens"] == 5 * len(res.chunks)
    assert float(res.advantages_B_T.sum()) == pytest.approx(sum(5 * c.pihat for c in res.chunks), rel=1e-5)


def test_failed_chunk_falls_back_to_pibar_and_run_goes_on(rollouts, tiny_tok):
    calls = {"n": 0}

    def flaky(req):
        calls["n"] += 1
        return TeacherUnavailableError("outage past deadline") if calls["n"] == 1 else ["something else"] * req.n

    p = _pipeline(ScriptedTeacher(flaky), tiny_tok)
    res = p.audit(rollouts, step=0)
    p.close()
    failed = [c for c in res.chunks if c.failed]
    assert len(failed) == 1 and failed[0].phi == [] and failed[0].pihat == pytest.approx(failed[0].pibar)
    assert res.metrics["teacher_failed_chunks"] == 1


def test_configuration_errors_stop_the_step(rollouts, tiny_tok):
    p = _pipeline(ScriptedTeacher(lambda req: TeacherAuthError("bad key")), tiny_tok)
    with pytest.raises(TeacherAuthError):
        p.audit(rollouts, step=0)
    p.close()


def test_budget_stops_before_spending_more(rollouts, tiny_tok):
    teacher = ScriptedTeacher(lambda req: ["x"] * req.n, cost=0.01)
    p = _pipeline(teacher, tiny_tok, max_usd=0.02)
    res = p.audit(rollouts, step=0)
    assert p.spent_usd == pytest.approx(0.01 * 4 * len(res.chunks))
    assert p.spent_usd >= 0.02
    n_before = len(teacher.requests)
    with pytest.raises(BudgetExceededError, match="--resume"):
        p.audit(rollouts, step=1)
    assert len(teacher.requests) == n_before
    p.close()


def test_advantages_scatter():
    chunks = [ChunkAudit(0, 1, 2, "", [], [], pihat=0.5), ChunkAudit(1, 0, 3, "", [], [], pihat=0.25)]
    adv, mask = advantages_B_T((2, 4), chunks)
    assert adv.tolist() == [[0, 0.5, 0.5, 0], [0.25, 0.25, 0.25, 0]]
    assert mask.sum() == 5
