"""`--method sft` trains through the real `run_train` path on tiny models: it buys teacher
solutions through the teacher stack, trains on them (each step's cross-entropy falls), samples the
student only when a gate or negatives need it, and replays offline from the recorded solutions."""

import json

import pytest
import torch

import omniopd.learner as learner_mod
from omniopd import teachers as registry
from omniopd.config import build_config
from omniopd.methods.sft import sft_targets
from omniopd.train import run_train
from providers.local import LocalTeacher
from tests.test_methods_train import _assert_each_step_descends, _run
from tests.tiny import tiny_llama


def test_sft_targets_rule():
    nan = float("nan")
    v = torch.tensor([1.0, 0.0, 0.0, 0.0,   # prompt 0: one right
                      0.0, 0.0, nan, 0.0])  # prompt 1: none right (one not judged)
    assert sft_targets(v, 4, only_failures=False, negatives=False) == ([0, 1], [], [])
    assert sft_targets(v, 4, only_failures=True, negatives=False) == ([1], [0], [])
    assert sft_targets(v, 4, only_failures=True, negatives=True) == ([1], [0], [1, 2, 3, 4, 5, 7])


def test_plain_sft_buys_solutions_and_learns_them_without_sampling_the_student(tmp_path, monkeypatch):
    def no_rollouts(*a, **k):
        raise AssertionError("plain SFT sampled the student")

    monkeypatch.setattr(learner_mod, "generate_rollouts", no_rollouts)
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "sft", **{"method.teacher_solutions": 2})
    assert result.steps == 2 and result.teacher_samples == 8  # 2 prompts x 2 solutions x 2 steps
    for batch in batches:
        valid = batch["completion_mask"].bool()
        assert batch["completion_ids"].size(0) == 4 and torch.all(batch["advantages"][valid] == 1.0)
        assert batch["audit_mask"][valid].all()  # no KL anchor on teacher text
    _assert_each_step_descends(tok, batches, snaps)  # the teacher's solutions got more likely
    assert rows[0]["teacher_samples"] == 4 and rows[0]["sft_prompts_bought"] == 2


def test_only_failures_buys_for_unsolved_prompts_and_keeps_free_targets(tmp_path, monkeypatch):
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "sft", **{"method.sft_only_failures": True})
    for row, batch in zip(rows, batches):
        free, bought = int(row["sft_free_targets"]), int(row["sft_prompts_bought"])
        assert bought < 2 or free == 0
        assert row["teacher_samples"] == bought  # one solution per unsolved prompt, none for solved ones
        assert batch["completion_ids"].size(0) == free + int(row["sft_teacher_rows"])
    assert sum(r["sft_free_targets"] for r in rows) > 0  # the stand-in verifier passes some samples
    _assert_each_step_descends(tok, batches, snaps)


def test_negatives_push_wrong_samples_down(tmp_path, monkeypatch):
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "sft", **{"method.sft_negatives": 0.5})
    negs = [(b, batch) for batch in batches for b in range(batch["advantages"].size(0))
            if (batch["advantages"][b] < 0).any()]
    assert negs and all(float(batch["advantages"][b][batch["completion_mask"][b].bool()].max()) == -0.5
                        for b, batch in negs)
    _assert_each_step_descends(tok, batches, snaps)


def test_sft_replays_offline_from_the_recorded_solutions(tmp_path, tiny_tok, monkeypatch):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": q}) for q in ["Add 7 and 5.", "Tom has 3 apples."]))

    def cfg(out, **over):
        return build_config(None, {"method.name": "sft", "data.path": str(data), "student.max_new_tokens": 8,
                                   "learner.max_steps": 2, "learner.learning_rate": 1e-3, "output.dir": str(tmp_path / out),
                                   "output.save_steps": 0, "cache.path": str(tmp_path / "t.sqlite"), **over})

    calls = []
    teacher = LocalTeacher(tiny_llama(tiny_tok, seed=1), tiny_tok, spec="local:tiny-teacher")
    sample = teacher.sample

    async def counting(request):
        calls.append(request)
        return await sample(request)

    teacher.sample = counting
    first = run_train(cfg("run"), model=tiny_llama(tiny_tok, seed=0), tokenizer=tiny_tok, teacher=teacher, echo=False)
    # step 2 sees the same 2 prompts again: their solutions come from the cache, paid once
    assert first.steps == 2 and len(calls) == 2 and first.teacher_samples == 4

    def no_provider(*a, **k):
        raise AssertionError("replay constructed a teacher")

    monkeypatch.setattr(registry, "build_teacher", no_provider)
    student = tiny_llama(tiny_tok, seed=0)
    before = [p.detach().clone() for p in student.parameters()]
    again = run_train(cfg("replayed", **{"cache.replay": str(tmp_path / "run"), "cache.mode": "off"}), model=student,
                      tokenizer=tiny_tok, echo=False)
    assert again.steps == 2 and again.teacher_usd == 0.0 and len(calls) == 2  # no request while replaying
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_sft_refuses_what_does_not_apply(tmp_path):
    with pytest.raises(Exception, match="apply to --method sft"):
        build_config(None, {"method.name": "omniopd", "method.sft_negatives": 0.5})


def test_eval_every_writes_accuracy_against_dollars_and_the_report_plots_it(tmp_path, tiny_tok):
    from omniopd.report import build_report
    from omniopd.run_data import RunData

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": q, "answer": "#### 12"}) for q in ["Add 7 and 5.", "Tom has 3."]))
    held = tmp_path / "held.jsonl"
    held.write_text("\n".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"})
                              for i in range(5)))
    cfg = build_config(None, {"method.name": "sft", "data.path": str(data), "data.answer_field": "answer",
                              "data.eval_path": str(held), "data.eval_limit": 3, "output.eval_every": 2,
                              "student.max_new_tokens": 6, "learner.max_steps": 3, "output.dir": str(tmp_path / "run"),
                              "output.save_steps": 0, "cache.mode": "off"})
    teacher = LocalTeacher(tiny_llama(tiny_tok, seed=1), tiny_tok, spec="local:tiny-teacher")
    run_train(cfg, model=tiny_llama(tiny_tok, seed=0), tokenizer=tiny_tok, teacher=teacher, echo=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "heldout.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3]  # before training, every 2 steps, the last step
    assert all(r["n"] == 3 and 0.0 <= r["greedy_accuracy"] <= 1.0 for r in rows)
    assert [r["teacher_samples"] for r in rows] == [0, 4, 6]  # what had been bought at each point
    run = RunData.open(tmp_path / "run")
    try:
        report = build_report(run, tmp_path / "report")
    finally:
        run.close()
    assert any(p.name == "heldout.png" for p in report.plots)
    with pytest.raises(Exception, match="--eval-every needs held-out problems"):
        build_config(None, {"output.eval_every": 2})


def test_sft_step_line_shows_cross_entropy_not_the_surrogate():
    from omniopd.run_log import step_line

    row = {"step": 3, "reward_mean": 0.0, "kl": 0.0, "forks": 0, "teacher_samples": 2, "seconds": 1.5,
           "teacher_cost_usd_total": 0.0123}
    line = step_line(row, {"omniopd/sft_prompts": 2.0, "omniopd/sft_prompts_bought": 1.0, "omniopd/chunk_loss": 2.5,
                           "loss": -1.0})
    assert line == "step    3 | cross-entropy 2.5000 | prompts bought 1 | teacher samples 2 | $0.0123 | 1.5s"
    assert "pihat" in step_line(row, {"loss": 0.5})
