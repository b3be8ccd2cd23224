"""Each method trains 2 steps on tiny models through the real `run_train` path, and moves the
student in the direction its loss intends: on every batch it trained on, the method's own
surrogate loss is lower after the update than before.

Surrogate per method (A = the batch's advantages, recorded as the learner built them):
    sum_t -A_t * log pi(y_t)            (opd, sg-opd, tropd's trusted tokens, omniopd)
  + sum_t fkl_t * [t is an outlier]     (tropd: forward KL over the teacher's top-k)
The white-box teacher is a tiny model with a sharpened head, so its signal is far from zero.
"""

import json
import zlib

import pytest
import torch
from transformers import TrainerCallback

from omniopd.config import build_config
from omniopd.errors import TeacherAccessError
from omniopd.learner import OmniOPDTrainer
from omniopd.methods.tropd import forward_kl_topk_B_T
from omniopd.train import build_method, run_train
from providers.local import LocalTeacher
from tests.tiny import tiny_llama, tiny_tokenizer


class _Snapshots(TrainerCallback):
    """Copies of the student's weights before and after every optimizer step."""

    def __init__(self):
        self.before, self.after = {}, {}

    def on_step_begin(self, args, state, control, model=None, **kw):
        self.before[state.global_step + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_step_end(self, args, state, control, model=None, **kw):
        self.after[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def _logp_B_T_V(tok, weights, batch):
    # a fresh module: TRL patches the trained model's forward, so a deepcopy would not be independent
    m = tiny_llama(tok)
    m.load_state_dict(weights)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    T = batch["completion_ids"].size(1)
    with torch.no_grad():
        return torch.log_softmax(m(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1].float(), -1)


def _surrogate(logp_B_T_V, batch):
    mask = batch["completion_mask"].float()
    logp = logp_B_T_V.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    loss = (-batch["advantages"] * logp * mask).sum()
    if "teacher_topk_ids" in batch:
        fkl = forward_kl_topk_B_T(logp_B_T_V.gather(-1, batch["teacher_topk_ids"]), batch["teacher_topk_logps"])
        loss = loss + (fkl * batch["tropd_fkl_mask"] * mask).sum()
    return float(loss)


def _run(tmp_path, monkeypatch, method, verifier=None, **over):
    batches = []
    original = OmniOPDTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        batches.append({k: v.detach().clone() for k, v in out.items() if torch.is_tensor(v)})
        return out

    monkeypatch.setattr(OmniOPDTrainer, "_generate_and_score_completions", spy)
    data = tmp_path / "d.jsonl"
    qs = ["Tom has 3 apples.", "The train leaves at noon.", "Add 7 and 5.", "Natalia sold clips."]
    data.write_text("\n".join(json.dumps({"question": q, "answer": "12"}) for q in qs))
    tok = tiny_tokenizer()
    student = tiny_llama(tok, seed=0)
    t_model = tiny_llama(tok, seed=1)
    with torch.no_grad():
        t_model.lm_head.weight.mul_(30.0)  # a confident teacher: large, varied log pi_T - log pi_S
    teacher = LocalTeacher(t_model, tok, spec="local:tiny-teacher")
    values = {"method.name": method, "data.path": str(data), "data.answer_field": "answer",
              "student.max_new_tokens": 10, "student.generations": 4, "learner.prompts_per_step": 2,
              "learner.max_steps": 2, "learner.learning_rate": 1e-3, "learner.seed": 0,
              "output.dir": str(tmp_path / "out"), "scheduler.chunk_tokens": 4, "scheduler.chunks_per_completion": 2,
              "teacher.samples": 2, "scorer.similarity": "edit", **over}
    snaps = _Snapshots()
    # a deterministic stand-in verifier (crc parity of the text): mixed verdicts in every group
    if verifier is None:
        verifier = lambda text, gold: zlib.crc32(text.encode()) % 2 == 0  # noqa: E731
    result = run_train(build_config(None, values), model=student, tokenizer=tok, teacher=teacher, phi=None,
                       extra_callbacks=[snaps], echo=False, verifier=verifier)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    return result, batches, snaps, tok, rows, t_model


def _teacher_signal(teacher, batch):
    """log pi_T(y_t) - log pi_old(y_t) on the batch, computed here from the teacher model itself."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    T = batch["completion_ids"].size(1)
    with torch.no_grad():
        logp_t = torch.log_softmax(teacher(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1].float(), -1)
    t = logp_t.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return (t - batch["behaviour_logps"]) * batch["completion_mask"]


def _assert_each_step_descends(tok, batches, snaps):
    for k, batch in enumerate(batches, start=1):
        before = _surrogate(_logp_B_T_V(tok, snaps.before[k], batch), batch)
        after = _surrogate(_logp_B_T_V(tok, snaps.after[k], batch), batch)
        assert after < before, (k, before, after)


@pytest.mark.parametrize("method", ["opd", "sg-opd", "tropd"])
def test_white_box_method_moves_the_student_its_way(tmp_path, monkeypatch, method):
    result, batches, snaps, tok, rows, teacher = _run(tmp_path, monkeypatch, method)
    assert result.steps == 2 and len(batches) == 2
    _assert_each_step_descends(tok, batches, snaps)
    assert all(r["kl"] == 0.0 for r in rows)  # no reference anchor for the OPD family
    for batch, row in zip(batches, rows):  # ... and that way is the teacher's: A_t is log pi_T - log pi_old (gated, scaled)
        d = _teacher_signal(teacher, batch)
        a = batch["advantages"]
        if method == "opd":
            assert torch.allclose(a, d, atol=1e-4)
        if method == "sg-opd":  # student rows: lambda * d with lambda in {1, 1.8}; teacher rows: 1
            st = ~batch["sg_teacher_row"]
            ratio = a[st][batch["completion_mask"][st].bool()] / d[st][batch["completion_mask"][st].bool()]
            assert all(min(abs(r - 1.0), abs(r - 1.8)) < 1e-3 for r in ratio.tolist())
            assert (a[~st][batch["completion_mask"][~st].bool()] == 1.0).all()
        if method == "tropd":  # trusted on-policy tokens: d; outliers: 0 (forward KL instead); prefix: beta
            on = batch["completion_mask"].bool() & ~batch["tropd_prefix_mask"].bool()
            trusted = on & (batch["tropd_fkl_mask"] == 0)
            assert torch.allclose(a[trusted], d[trusted], atol=1e-4)
            assert (a[on & (batch["tropd_fkl_mask"] > 0)] == 0).all()
            assert (d[batch["tropd_fkl_mask"] > 0] < 0).all()  # outliers are where the teacher likes y_t less
            assert torch.allclose(a[batch["tropd_prefix_mask"].bool()], torch.tensor(row["tropd_guidance_weight"]))
    if method == "sg-opd":
        assert rows[0]["sg_teacher_rows"] >= 1 and rows[1]["sg_teacher_rows"] == 0  # cold start only (P = 1)
        b, rows_t = batches[0], batches[0]["sg_teacher_row"]
        assert rows_t.any()
        # the verified teacher completions got more likely (plain log-likelihood on them)
        def teacher_rows_logp(weights):
            lp = _logp_B_T_V(tok, weights, b).gather(-1, b["completion_ids"].unsqueeze(-1)).squeeze(-1)
            return float((lp * b["completion_mask"])[rows_t].sum())
        assert teacher_rows_logp(snaps.after[1]) > teacher_rows_logp(snaps.before[1])
        assert rows[0]["sg_agree_share"] > 0
    if method == "tropd":
        assert batches[0]["tropd_fkl_mask"].sum() > 0  # the sharp teacher makes outliers
        assert rows[0]["tropd_guided_rows"] == 2 and rows[0]["method_extra_loss"] > 0
        assert rows[0]["tropd_guidance_share"] == pytest.approx(0.5)


def test_gated_omniopd_with_two_updates_per_batch(tmp_path, monkeypatch):
    result, batches, snaps, tok, rows, teacher = _run(
        tmp_path, monkeypatch, "omniopd", **{"method.drift_gate": "block", "method.gate_block_tokens": 4,
                                            "learner.updates_per_batch": 2, "learner.beta": 0.0})
    assert result.steps == 2 and len(batches) == 1  # one batch of rollouts, two updates on it
    assert rows[0]["drift_gate_min"] == pytest.approx(1.0, abs=1e-5)  # first pass: nothing drifted
    assert rows[1]["drift_gate_min"] < 1.0 and rows[1]["drift_abs_mean"] > 0  # second pass: the gate acts
    b = batches[0]
    before = _surrogate(_logp_B_T_V(tok, snaps.before[1], b), b)
    after = _surrogate(_logp_B_T_V(tok, snaps.after[2], b), b)
    assert after < before


def test_white_box_method_with_an_api_teacher_fails_before_training(tmp_path):
    class ApiTeacher:
        spec = "openai:gpt-4.1-mini"

        async def sample(self, request):
            return []

    cfg = build_config(None, {"method.name": "tropd"})
    with pytest.raises(TeacherAccessError, match="--method omniopd"):
        build_method(cfg, tiny_tokenizer(), ApiTeacher(), None, [{"answer": "1"}])
    with pytest.raises(Exception, match="--answer-field"):
        build_method(build_config(None, {"method.name": "sg-opd"}), tiny_tokenizer(), ApiTeacher(), None, [{"answer": None}])


def test_omniopd_with_verifier_gate_scales_chunk_weights(tmp_path, monkeypatch):
    from omniopd.pipeline import Pipeline

    unscaled = []
    audit = Pipeline.audit

    def spy(self, rollouts, step):
        out = audit(self, rollouts, step)
        unscaled.append(out.advantages_B_T.clone())
        return out

    monkeypatch.setattr(Pipeline, "audit", spy)
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "omniopd", **{"method.verifier_gate": True,
                                                                                        "learner.beta": 0.0,
                                                                                        "method.paper_loss": True})
    assert result.steps == 2 and len(unscaled) == 2
    _assert_each_step_descends(tok, batches, snaps)
    for b, pihat, row in zip(batches, unscaled, rows):
        texts = tok.batch_decode([ids[m.bool()] for ids, m in zip(b["completion_ids"], b["completion_mask"])],
                                 skip_special_tokens=True)
        correct = torch.tensor([zlib.crc32(t.encode()) % 2 == 0 for t in texts])
        assert 0 < int(correct.sum()) < len(texts)  # both kinds of rows are present
        scale = torch.where(correct, 1.8, 0.5).unsqueeze(1)
        assert torch.allclose(b["advantages"], pihat * scale)
        assert row["verifier_judged"] == len(texts)
        assert row["verifier_correct_share"] == pytest.approx(float(correct.float().mean()))


def test_drift_gate_on_offline_replay_compares_with_the_recorded_behaviour(tmp_path):
    """Replay feeds the recorded behaviour log-probs to the gate: a student that is not the one
    that sampled them (another init) is gated from the first step; the same init is not."""
    tok = tiny_tokenizer()
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"question": q}) for q in ["Tom has 3 apples.", "Add 7 and 5."]))

    def cfg(out, **extra):
        return build_config(None, {"method.name": "omniopd", "data.path": str(data), "student.max_new_tokens": 12,
                                   "student.generations": 2,
                                   "learner.prompts_per_step": 2, "learner.max_steps": 1, "learner.seed": 0,
                                   "scheduler.chunk_tokens": 4, "scheduler.chunks_per_completion": 2,
                                   "teacher.samples": 2, "scorer.similarity": "edit", "output.dir": str(tmp_path / out),
                                   "cache.path": str(tmp_path / "teacher.sqlite"), **extra})

    run_train(cfg("run"), model=tiny_llama(tok, seed=0), tokenizer=tok,
              teacher=LocalTeacher(tiny_llama(tok, seed=1), tok, spec="local:t"), echo=False)
    gated = {"cache.replay": str(tmp_path / "run"), "method.drift_gate": "block", "method.gate_block_tokens": 4}
    rows = {}
    for name, seed in (("same", 0), ("other", 2)):
        run_train(cfg(name, **gated), model=tiny_llama(tok, seed=seed), tokenizer=tok, echo=False)
        rows[name] = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()][0]
    assert rows["same"]["drift_gate_min"] == pytest.approx(1.0, abs=1e-4)  # the recorded policy is this one
    assert rows["other"]["drift_abs_mean"] > 0.01 and rows["other"]["drift_gate_min"] < 0.999
