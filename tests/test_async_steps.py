"""`--async-steps 1` through the real `run_train` path on tiny models.

With one step of overlap every update trains on rollouts sampled at most one optimizer step
earlier, TRL's PPO ratio is taken against the behaviour log-probs recorded when they were
sampled (`old_per_token_logps`), the queue of started batches never exceeds two, and no batch
is started that no step uses (the teacher is paid for exactly `max_steps` batches).
"""

import asyncio
import json

import pytest
import torch

from omniopd.config import build_config
from omniopd.errors import TeacherUnavailableError
from omniopd.learner import OmniOPDTrainer
from omniopd.pipeline import Pipeline
from omniopd.train import run_train
from providers.base import TeacherSample
from tests.tiny import tiny_llama, tiny_tokenizer


class SlowTeacher:
    """Answers every fork with fixed words after a short wait (an API's latency, in-process)."""

    spec = "scripted:slow"

    def __init__(self, latency_s=0.05):
        self.latency_s, self.requests = latency_s, 0

    async def sample(self, request):
        self.requests += 1
        await asyncio.sleep(self.latency_s)
        return [TeacherSample(text=f"the answer is {i}", teacher=self.spec) for i in range(request.n)]

    def identity(self):
        return {"provider": "scripted", "model": "slow"}

    async def aclose(self):
        pass


def _train(tmp_path, monkeypatch, async_steps, steps=4, teacher=None):
    log = {"generated": [], "batches": [], "in_flight": [], "starts": 0, "finishes": 0}
    import omniopd.learner as learner_mod

    gen = learner_mod.generate_rollouts

    def recording_generate(model, *a, **kw):
        r = gen(model, *a, **kw)
        log["generated"].append(r.logprobs_B_T.clone())
        return r

    monkeypatch.setattr(learner_mod, "generate_rollouts", recording_generate)
    start, finish = Pipeline.start, Pipeline.finish

    def counting_start(self, *a, **kw):
        log["starts"] += 1
        log["in_flight"].append(log["starts"] - log["finishes"])
        return start(self, *a, **kw)

    def counting_finish(self, *a, **kw):
        log["finishes"] += 1
        return finish(self, *a, **kw)

    monkeypatch.setattr(Pipeline, "start", counting_start)
    monkeypatch.setattr(Pipeline, "finish", counting_finish)
    compute = OmniOPDTrainer.compute_loss

    def recording_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # what TRL's loss reads for its ratio, and the student's log-probs before this update
        with torch.no_grad():
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
            attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
            T = inputs["completion_ids"].size(1)
            logits = model(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1].float()
            now = torch.log_softmax(logits, -1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
        log["batches"].append({"old": inputs.get("old_per_token_logps"), "behaviour": inputs["behaviour_logps"].clone(),
                               "mask": inputs["completion_mask"].clone(), "now": now, "step": self.state.global_step})
        return compute(self, model, inputs, return_outputs, num_items_in_batch)

    monkeypatch.setattr(OmniOPDTrainer, "compute_loss", recording_loss)
    data = tmp_path / "d.jsonl"
    qs = ["Tom has 3 apples.", "The train leaves at noon.", "Add 7 and 5.", "Natalia sold clips."]
    data.write_text("\n".join(json.dumps({"question": q}) for q in qs))
    tok = tiny_tokenizer()
    teacher = teacher or SlowTeacher()
    values = {"data.path": str(data), "student.max_new_tokens": 12, "student.generations": 2,
              "learner.prompts_per_step": 2, "learner.max_steps": steps, "learner.learning_rate": 5e-3,
              "learner.seed": 0, "learner.async_steps": async_steps, "output.dir": str(tmp_path / f"out{async_steps}"),
              "output.save_steps": 100, "scheduler.chunk_tokens": 4, "scheduler.chunks_per_completion": 2,
              "teacher.samples": 2, "scorer.similarity": "edit", "cache.mode": "off",
              "method.paper_loss": True}  # the paper's signal: only the student's own rows are trained
    result = run_train(build_config(None, values), model=tiny_llama(tok, seed=0), tokenizer=tok, teacher=teacher,
                       echo=False)
    rows = [json.loads(line) for line in (tmp_path / f"out{async_steps}" / "metrics.jsonl").read_text().splitlines()]
    return result, rows, log, teacher


def _rows(t):
    return sorted(tuple(r) for r in t.tolist())


def test_async_one_step_trains_on_rollouts_at_most_one_step_stale(tmp_path, monkeypatch):
    result, rows, log, teacher = _train(tmp_path, monkeypatch, async_steps=1)
    assert result.steps == 4 and len(rows) == 4 and len(log["batches"]) == 4
    staleness = [r["rollout_staleness"] for r in rows]
    assert max(staleness) <= 1 and staleness[1:] == [1.0, 1.0, 1.0]  # after the first step, always one behind
    # as many batches sampled and audited as steps: none started that no update would use
    assert len(log["generated"]) == 4 and log["starts"] == log["finishes"] == 4
    assert max(log["in_flight"]) == 2  # the queue is bounded: this batch and the one ahead of it
    for k, b in enumerate(log["batches"]):
        # TRL's ratio pi_theta / pi_old takes pi_old from old_per_token_logps: the recorded behaviour log-probs
        assert b["old"] is not None and torch.equal(b["old"], b["behaviour"])
        # (TRL shuffles a batch's rows: compare them as a multiset)
        assert _rows(b["behaviour"]) in [_rows(g) for g in log["generated"]], \
            f"step {k}: the batch's old log-probs are exactly those recorded when it was sampled"
    # episodes are recorded under the step that trained on them: a replay meets them in training order
    from cache.episodes import load_episodes

    episodes = dict(load_episodes(tmp_path / "out1"))
    assert sorted(episodes) == [0, 1, 2, 3]
    for b in log["batches"]:
        trained = sorted(tuple(r[m.bool()].tolist()) for r, m in zip(b["behaviour"], b["mask"]))
        assert trained == sorted(tuple(r) for r in episodes[b["step"]]["behaviour_logprobs"])
    # the stale batches were sampled by an older student: the ratio is not 1, so the correction acts
    for b in log["batches"][1:]:
        m = b["mask"].bool()
        assert (b["now"][m] - b["old"][m]).abs().max() > 1e-4


def test_sync_order_is_unchanged(tmp_path, monkeypatch):
    result, rows, log, teacher = _train(tmp_path, monkeypatch, async_steps=0, steps=2)
    assert [r["rollout_staleness"] for r in rows] == [0.0, 0.0]
    assert max(log["in_flight"]) == 1 and log["starts"] == 2
    assert all(b["old"] is None for b in log["batches"])  # on-policy: TRL uses the detached current log-probs


def test_async_steps_is_validated():
    with pytest.raises(Exception, match="async_steps"):
        build_config(None, {"learner.async_steps": -1})


class DownTeacher(SlowTeacher):
    """An outage: every request fails after the wait (the client's retries already spent)."""

    async def sample(self, request):
        self.requests += 1
        await asyncio.sleep(self.latency_s)
        raise TeacherUnavailableError("outage past the deadline")


def test_a_teacher_outage_neither_stops_the_run_nor_piles_up_work(tmp_path, monkeypatch):
    result, rows, log, teacher = _train(tmp_path, monkeypatch, async_steps=1, teacher=DownTeacher())
    assert result.steps == 4 and log["starts"] == 4 and max(log["in_flight"]) == 2
    assert all(r["forks"] > 0 and r["teacher_failed_chunks"] == r["forks"] and r["teacher_samples"] == 0 for r in rows)
    assert teacher.requests == sum(r["forks"] for r in rows)  # each fork asked once: nothing queued up behind
