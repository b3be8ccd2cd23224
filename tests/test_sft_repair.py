"""`--method sft --sft-repair` trains through the real `run_train` path on tiny models: prompts the
student fails get a first-error repair instead of a whole teacher solution, the row is the prompt
plus the student's own lines before the wrong one (context, not trained) and the correction
(advantage 1), a repair that fails to parse buys a whole solution, and each step's loss falls."""

import re

import pytest
import torch

import omniopd.learner as learner_mod
from omniopd.config import build_config
from omniopd.methods.sft import SolutionSFT, repair_rows
from providers.base import TeacherSample
from providers.local import LocalTeacher
from providers.repair import REPAIR_PROMPT, parse_repair
from tests.test_methods_train import _assert_each_step_descends, _run

CORRECTION = "so the answer is 12."
ASKS_REPAIR = REPAIR_PROMPT.split("{problem}")[0]


def test_repair_rows_rule():
    nan = float("nan")
    v = torch.tensor([1.0, 0.0,    # prompt 0: solved -> no repair
                      nan, 0.0,    # prompt 1: unsolved, row 3 wrong
                      0.0, 0.0,    # prompt 2: both wrong, row 4 blank -> row 5
                      nan, nan])   # prompt 3: nothing judged -> a whole solution
    comps = ["a", "b", "c", "d", "  \n", "f", "g", "h"]
    assert repair_rows(v, 2, [0, 1, 2, 3], comps) == {1: 3, 2: 5}
    assert repair_rows(v, 2, [2], comps) == {2: 5}  # only prompts being bought for


def test_sft_repair_needs_sft_and_an_answer_field():
    with pytest.raises(Exception, match="apply to --method sft"):
        build_config(None, {"method.name": "omniopd", "method.sft_repair": True})
    with pytest.raises(Exception, match="--sft-repair .*--answer-field"):
        build_config(None, {"method.name": "sft", "method.sft_repair": True})
    cfg = build_config(None, {"method.name": "sft", "method.sft_repair": True, "data.answer_field": "answer"})
    assert cfg.method.sft_repair


def test_sft_repair_trains_the_correction_after_the_students_own_prefix(tmp_path, monkeypatch):
    asked: list[str] = []
    original = LocalTeacher.sample

    async def repairing(self, request):
        """The tiny teacher, answering repair requests with a canned minimal repair of the last line
        (the first one malformed, to exercise the fallback)."""
        ask = request.messages[-1].content
        if not ask.startswith(ASKS_REPAIR):
            return await original(self, request)
        asked.append(ask)
        k = len(re.findall(r"^\[\d+\] ", ask, flags=re.M))
        text = "I would fix the last line." if len(asked) == 1 else f"STEP {k}\n{CORRECTION}"
        return [TeacherSample(text, "stop", input_tokens=40, output_tokens=6, model="tiny", teacher=self.spec)]

    monkeypatch.setattr(LocalTeacher, "sample", repairing)
    seen = []  # (the student's wrong answer, the outcome) per repair request
    real_repair = SolutionSFT._repair

    def spy(self, rollouts, groups, to_repair):
        out = real_repair(self, rollouts, groups, to_repair)
        seen.append([(rollouts.completions[b], out[p]) for p, b in to_repair.items()])
        return out

    monkeypatch.setattr(SolutionSFT, "_repair", spy)
    real_rollouts = learner_mod.generate_rollouts

    def two_lines(model, tok, *a, **k):
        """The tiny student's own samples, with a line break in the middle: answers of two lines,
        so a repair of the last line keeps a prefix of the student's own text."""
        r = real_rollouts(model, tok, *a, **k)
        nl = tok.encode("\n", add_special_tokens=False)[0]
        for b, n in enumerate(r.lengths):
            if n >= 4:
                r.completion_ids[b, n // 2] = nl
        r.completions = tok.batch_decode([r.completion_ids[b, :n].tolist() for b, n in enumerate(r.lengths)],
                                         skip_special_tokens=True)
        return r

    monkeypatch.setattr(learner_mod, "generate_rollouts", two_lines)
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "sft", verifier=lambda text, gold: False,
                                                **{"method.sft_repair": True})
    assert result.steps == 2 and len(batches) == 2 and asked
    for row, batch, step_seen in zip(rows, batches, seen):
        repaired = [(answer, o) for answer, o in step_seen if o.repair is not None]
        failed = [o for _, o in step_seen if o.repair is None]
        assert row["sft_repairs"] == len(repaired) and row["sft_repair_failed"] == len(failed)
        assert row["sft_repair_tokens"] == 6 * len(step_seen)  # a failed repair was paid for too
        # every prompt is unsolved: a repair each, a whole solution only where the repair failed
        assert row["sft_prompts_bought"] == len(failed) and row["sft_prompts"] == 2
        assert row["teacher_samples"] == len(step_seen) + len(failed)
        assert batch["completion_ids"].size(0) == len(repaired) + len(failed)
        for answer, o in repaired:
            rep = parse_repair(o.sample.text, answer)
            assert o.repair == rep and answer.startswith(rep.prefix_text)  # the prefix is the student's own text
            ctx = tok.encode(rep.prefix_text, add_special_tokens=False) if rep.prefix_text else []
            want = (tok.encode(CORRECTION, add_special_tokens=False) + [tok.eos_token_id])[:10]  # --max-new-tokens
            matches = []
            for b in range(batch["completion_ids"].size(0)):
                m = batch["completion_mask"][b].bool()
                prompt = batch["prompt_ids"][b][batch["prompt_mask"][b].bool()].tolist()
                if batch["completion_ids"][b][m].tolist() == want and (not ctx or prompt[-len(ctx):] == ctx):
                    matches.append(b)
                    assert torch.all(batch["advantages"][b][m] == 1.0)
                    assert tok.decode(prompt).endswith("<|im_start|>assistant\n" + rep.prefix_text)
            assert matches
    assert sum(r["sft_repair_failed"] for r in rows) == 1 and sum(r["sft_repairs"] for r in rows) >= 3
    assert any(o.repair.prefix_text for step_seen in seen for _, o in step_seen if o.repair)  # some kept a prefix
    _assert_each_step_descends(tok, batches, snaps)  # the corrections after the student's prefixes got more likely


def test_sft_repair_replays_offline_from_the_recorded_repairs(tmp_path, tiny_tok, monkeypatch):
    import json

    from omniopd import teachers as registry
    from omniopd.train import run_train
    from tests.tiny import tiny_llama

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": q, "answer": "12"}) for q in ["Add 7 and 5.", "Tom has 3 apples."]))

    def cfg(out, **over):
        return build_config(None, {"method.name": "sft", "method.sft_repair": True, "data.path": str(data),
                                   "data.answer_field": "answer", "student.max_new_tokens": 8, "student.generations": 2,
                                   "learner.max_steps": 2, "learner.learning_rate": 1e-3, "learner.seed": 0,
                                   "output.dir": str(tmp_path / out), "output.save_steps": 0,
                                   "cache.path": str(tmp_path / "t.sqlite"), **over})

    calls = []
    teacher = LocalTeacher(tiny_llama(tiny_tok, seed=1), tiny_tok, spec="local:tiny-teacher")

    async def repairing(request):
        calls.append(request)
        return [TeacherSample(f"STEP 1\n{CORRECTION}", "stop", output_tokens=6, model="tiny", teacher=teacher.spec)]

    teacher.sample = repairing
    wrong = lambda text, gold: False  # noqa: E731
    first = run_train(cfg("run"), model=tiny_llama(tiny_tok, seed=0), tokenizer=tiny_tok, teacher=teacher, echo=False,
                      verifier=wrong)
    assert first.steps == 2 and calls and all(c.messages[-1].content.startswith(ASKS_REPAIR) for c in calls)

    def no_provider(*a, **k):
        raise AssertionError("replay constructed a teacher")

    monkeypatch.setattr(registry, "build_teacher", no_provider)
    n = len(calls)
    again = run_train(cfg("replayed", **{"cache.replay": str(tmp_path / "run"), "cache.mode": "off"}),
                      model=tiny_llama(tiny_tok, seed=0), tokenizer=tiny_tok, echo=False, verifier=wrong)
    assert again.steps == 2 and again.teacher_usd == 0.0 and len(calls) == n
    rows = [json.loads(x) for x in (tmp_path / "replayed" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["sft_repair_failed"] == 0 and r["sft_repairs"] >= 1 for r in rows)  # served the recorded repairs
