"""Each black-box signal (issue 9) trains through the real `run_train` path on tiny models and
moves the student its way: its surrogate loss sum_t -A_t log pi(y_t) over the whole batch
(the appended rows included) is lower after every update, and the specific effect holds —
chunks below the baseline lose probability, the teacher's continuations gain it, better
drafts gain more than worse ones, the best-scored chunk under a new phi gains."""

import pytest
import torch

from omniopd.methods.baseline import baselined_pihat_F
from omniopd.methods.imitation import imitation_rows
from omniopd.pipeline import Pipeline
from tests.test_methods_train import _assert_each_step_descends, _logp_B_T_V, _run

NO_ANCHOR = {"learner.beta": 0.0}  # the surrogate is the policy term alone


@pytest.fixture
def audits(monkeypatch):
    """The pipeline's audits, in order (their chunks: rows, starts, pi_hat, teacher samples)."""
    seen = []
    audit = Pipeline.audit

    def spy(self, rollouts, step):
        out = audit(self, rollouts, step)
        seen.append(out)
        return out

    monkeypatch.setattr(Pipeline, "audit", spy)
    return seen


def _row_logp(tok, weights, batch):
    """Sum of log pi over each row's completion tokens, per row (B,)."""
    lp = _logp_B_T_V(tok, weights, batch).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    return lp, (lp * batch["completion_mask"]).sum(-1)


def _chunk_logp(lp_B_T, c):
    return float(lp_B_T[c.row, c.start:c.start + c.length].sum())


@pytest.mark.parametrize("mode", ["group", "loo"])
def test_pihat_baseline_pushes_disagreed_chunks_down(tmp_path, monkeypatch, audits, mode):
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "omniopd",
                                                **{"method.pihat_baseline": mode, **NO_ANCHOR})
    assert result.steps == 2 and len(audits) == 2
    _assert_each_step_descends(tok, batches, snaps)
    for audit, batch in zip(audits, batches):
        cs = [c for c in audit.chunks if c.phi]
        expect = baselined_pihat_F(torch.tensor([c.pihat for c in cs], dtype=torch.float64),
                                   torch.tensor([c.row for c in cs]), 4, mode)
        got = [float(batch["advantages"][c.row, c.start]) for c in cs]
        assert got == pytest.approx(expect.tolist(), abs=1e-6)
    assert rows[0]["pihat_adv_neg_share"] > 0  # some chunks are pushed down ...
    cs, batch = [c for c in audits[0].chunks if c.phi], batches[0]
    a = {(c.row, c.start): float(batch["advantages"][c.row, c.start]) for c in cs}
    before, _ = _row_logp(tok, snaps.before[1], batch)
    after, _ = _row_logp(tok, snaps.after[1], batch)
    down = [c for c in cs if a[(c.row, c.start)] < -0.02]
    assert down
    # ... and they did lose probability in the update
    assert sum(_chunk_logp(after, c) for c in down) < sum(_chunk_logp(before, c) for c in down)


def test_fork_imitation_learns_the_teachers_continuations(tmp_path, monkeypatch, audits):
    w = 2.0
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "omniopd",
                                                **{"method.fork_imitation": w, **NO_ANCHOR})
    assert result.steps == 2
    _assert_each_step_descends(tok, batches, snaps)
    B = 8  # 2 prompts x G = 4
    for audit, batch, row in zip(audits, batches, rows):
        E = batch["completion_ids"].size(0) - B
        assert E == row["imitation_rows"] > 0
        extra_mask = batch["completion_mask"][B:].bool()
        adv = batch["advantages"][B:]
        # one advantage per row, w * count / N_eff: per fork they sum to w (N_eff = 2 samples here)
        per_row = [float(adv[e][extra_mask[e]][0]) for e in range(E)]
        assert all(torch.allclose(adv[e][extra_mask[e]], torch.tensor(per_row[e])) for e in range(E))
        assert sum(per_row) == pytest.approx(w * sum(1 for c in audit.chunks if c.samples))
        assert batch["audit_mask"][B:][extra_mask].all()  # no KL anchor on teacher text
        # the loss normaliser counts the student's own completion tokens only
        assert int(batch["num_items_in_batch"]) == int(batch["completion_mask"][:B].sum())
    batch = batches[0]
    _, before = _row_logp(tok, snaps.before[1], batch)
    _, after = _row_logp(tok, snaps.after[1], batch)
    assert float(after[B:].sum()) > float(before[B:].sum()) + 1e-3  # the teacher's text got more likely


def test_imitation_alone_trains_only_the_teachers_text(tmp_path, monkeypatch, audits):
    """--pihat-weight 0: the student's chunks carry no advantage, the teacher's rows do, and
    the update makes the teacher's continuations more likely (pure black-box DAgger)."""
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "omniopd",
                                                **{"method.pihat_weight": 0.0, "method.pihat_baseline": "loo",
                                                   "method.fork_imitation": 1.0, **NO_ANCHOR})
    assert result.steps == 2
    _assert_each_step_descends(tok, batches, snaps)
    B = 8
    for audit, batch in zip(audits, batches):
        assert audit.chunks and not batch["advantages"][:B].abs().any()
        assert (batch["advantages"][B:] > 0).any()
    batch = batches[0]
    _, before = _row_logp(tok, snaps.before[1], batch)
    _, after = _row_logp(tok, snaps.after[1], batch)
    assert float(after[B:].sum()) > float(before[B:].sum()) + 1e-3


def test_fork_imitation_runs_to_the_end_of_the_answer_with_a_larger_token_factor(tmp_path, monkeypatch, audits):
    over = {"method.fork_imitation": 1.0, "teacher.token_factor": 6.0, "student.max_new_tokens": 16, **NO_ANCHOR}
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "omniopd", **over)
    _assert_each_step_descends(tok, batches, snaps)
    C, B, eos = 4, 8, tok.eos_token_id
    batch, audit = batches[0], audits[0]
    n = batch["completion_mask"].sum(-1).tolist()
    got = [batch["completion_ids"][b, :n[b]].tolist() for b in range(batch["completion_ids"].size(0))]
    # the rows are the teacher's whole (untrimmed) samples, after the student's own prefix
    expect = imitation_rows(audit.chunks, got[:B], tok, 1.0, 16)
    assert got[B:] == expect.completions
    assert max(len(r) for r in got[B:]) > 2 * C  # continuations run past one chunk (24 teacher tokens asked)
    finished = [(c, s) for c in audit.chunks for s in c.samples if s.finish_reason == "stop"]
    assert finished  # the tiny teacher ends some answers within 24 tokens
    closed = [tok.encode(s.text, add_special_tokens=False) + [eos] for c, s in finished]
    closed = [ids for ids, (c, _) in zip(closed, finished) if len(ids) <= 16 - c.start]
    assert closed and all(ids in got[B:] for ids in closed)  # ... and those rows end with end-of-turn


def test_student_drafts_reward_the_better_drafts(tmp_path, monkeypatch, audits):
    K = 3
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "omniopd",
                                                **{"method.student_drafts": K, **NO_ANCHOR})
    assert result.steps == 2
    _assert_each_step_descends(tok, batches, snaps)
    B = 8
    forks = sum(1 for c in audits[0].chunks if c.phi)
    assert rows[0]["draft_rows"] == K * forks and rows[0]["draft_adv_abs_mean"] > 0
    batch = batches[0]
    m = batch["completion_mask"][B:].bool()
    a = torch.stack([batch["advantages"][B + e][m[e]][0] for e in range(m.size(0))])
    lp_before, _ = _row_logp(tok, snaps.before[1], batch)
    lp_after, _ = _row_logp(tok, snaps.after[1], batch)
    n = batch["completion_mask"][B:].sum(-1)
    gain = ((lp_after - lp_before)[B:] * batch["completion_mask"][B:]).sum(-1) / n  # per-token log-prob gain
    assert (a > 0).any() and (a < 0).any()
    assert float(gain[a > 0].mean()) > float(gain[a < 0].mean())


@pytest.mark.parametrize("similarity", ["numbers", "token_f1"])
def test_new_similarities_train_the_best_chunk_up(tmp_path, monkeypatch, audits, similarity):
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "omniopd",
                                                **{"scorer.similarity": similarity, **NO_ANCHOR})
    assert result.steps == 2
    _assert_each_step_descends(tok, batches, snaps)
    cs = [c for c in audits[0].chunks if c.phi]
    assert len({round(c.pihat, 6) for c in cs}) > 1  # phi tells chunks apart
    best = max(cs, key=lambda c: c.pihat)
    before, _ = _row_logp(tok, snaps.before[1], batches[0])
    after, _ = _row_logp(tok, snaps.after[1], batches[0])
    assert _chunk_logp(after, best) > _chunk_logp(before, best)


def test_signals_combine(tmp_path, monkeypatch, audits):
    over = {"method.pihat_baseline": "group", "method.fork_imitation": 1.0, "method.student_drafts": 2,
            "scorer.similarity": "numbers", "method.verifier_gate": True}
    result, batches, snaps, tok, rows, _ = _run(tmp_path, monkeypatch, "omniopd", **over)
    assert result.steps == 2
    for batch, row in zip(batches, rows):
        assert batch["completion_ids"].size(0) == 8 + row["draft_rows"] + row["imitation_rows"]
        assert row["pihat_adv_neg_share"] > 0 and row["kl"] >= 0
    (tmp_path / "b").mkdir()
    _, batches, snaps, tok, _, _ = _run(tmp_path / "b", monkeypatch, "omniopd", **{**over, **NO_ANCHOR})
    _assert_each_step_descends(tok, batches, snaps)
