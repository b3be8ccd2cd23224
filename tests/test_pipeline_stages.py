"""The pipeline's stages: streaming inside a step, an extra stage between pihat and scatter, start/finish."""

import asyncio
import threading

import pytest
import torch

from omniopd.event_loop import EventLoop
from omniopd.pipeline import Pipeline
from omniopd.rollouts import generate_rollouts
from omniopd.similarity import build_similarity
from scheduler import ForkScheduler
from tests.test_pipeline import ScriptedTeacher


class RowTeacher(ScriptedTeacher):
    """Row 0's forks wait (up to 5 s) until phi has scored some other chunk; the rest answer at once."""

    def __init__(self, slow_prefixes, phi_called: threading.Event, events: list):
        super().__init__(lambda req: ["the same words"] * req.n)
        self.slow, self.phi_called, self.events = slow_prefixes, phi_called, events

    async def sample(self, request):
        if request.prefix in self.slow:
            for _ in range(500):
                if self.phi_called.is_set():
                    break
                await asyncio.sleep(0.01)
            self.events.append("slow answered")
        return await super().sample(request)


@pytest.fixture
def rollouts(tiny_model, tiny_tok):
    torch.manual_seed(0)
    prompts = [[{"role": "user", "content": "Tom has 3 apples"}], [{"role": "user", "content": "Add 7 and 5"}]]
    return generate_rollouts(tiny_model, tiny_tok, prompts, max_new_tokens=30)


def test_scoring_starts_as_samples_arrive(rollouts, tiny_tok):
    sched = ForkScheduler(chunk_tokens=5, chunks_per_completion=2)
    starts = sched.select(rollouts.entropy_B_T, rollouts.lengths)
    comp = rollouts.completion_ids.tolist()
    slow = {tiny_tok.decode(comp[0][:s], skip_special_tokens=True) for s in starts[0]}
    phi_called, events = threading.Event(), []
    edit = build_similarity("edit")

    def phi(students, teachers):
        events.append("phi")
        phi_called.set()
        return edit(students, teachers)

    with EventLoop() as loop:
        p = Pipeline(RowTeacher(slow, phi_called, events), tiny_tok, sched, phi, samples=2, loop=loop)
        res = p.audit(rollouts, step=0)
        p.close()
    assert starts[0] and starts[1]
    # row 1's chunks were scored while row 0's teacher calls were still out
    assert events.index("phi") < events.index("slow answered")
    assert len(res.chunks) == len(starts[0]) + len(starts[1]) and all(len(c.phi) == 2 for c in res.chunks)


def test_an_extra_stage_between_pihat_and_scatter(rollouts, tiny_tok):
    seen = {}

    def baseline(state):  # a group baseline on pihat: what issue 9's signals plug in here
        mean = sum(c.pihat for c in state.chunks) / len(state.chunks)
        seen["before"] = [c.pihat for c in state.chunks]
        for c in state.chunks:
            c.pihat -= mean
        return {"pihat_baseline": mean}

    echo = ScriptedTeacher(lambda req: ["a b c", "x y z"][: req.n])
    p = Pipeline(echo, tiny_tok, ForkScheduler(chunk_tokens=5, chunks_per_completion=2), build_similarity("edit"),
                 samples=2, extra_stages=[baseline])
    pending = p.start(rollouts, step=3)  # requests out; the caller is free until finish
    res = p.finish(pending)
    p.close()
    assert res.metrics["pihat_baseline"] == pytest.approx(sum(seen["before"]) / len(seen["before"]))
    for c, before in zip(res.chunks, seen["before"]):
        assert res.advantages_B_T[c.row, c.start:c.start + c.length].tolist() == pytest.approx(
            [before - res.metrics["pihat_baseline"]] * c.length, abs=1e-6)
    for k in ("scheduler_seconds", "teacher_seconds", "scorer_seconds", "pihat_mean", "audited_tokens", "forks"):
        assert k in res.metrics


def test_seeded_audits_with_a_local_teacher_repeat(rollouts, tiny_tok):
    from providers.local import LocalTeacher
    from tests.tiny import tiny_llama

    teacher_model = tiny_llama(tiny_tok, seed=1)
    texts = []
    for _ in range(3):
        p = Pipeline(LocalTeacher(teacher_model, tiny_tok, spec="local:tiny"), tiny_tok,
                     ForkScheduler(chunk_tokens=5, chunks_per_completion=2), build_similarity("edit"), samples=3)
        torch.manual_seed(1)
        texts.append([c.teacher_texts for c in p.audit(rollouts, step=0).chunks])
        p.close()
    assert texts[0] and texts[0] == texts[1] == texts[2]  # one batched generate per step, the same every time
