"""The black-box signals' math (issue 9) with hand-computed values: baselines, imitation weights,
group-relative draft advantages, the numbers and token-F1 similarities, appended rows."""

import pytest
import torch

from omniopd.config import build_config
from omniopd.errors import ConfigError
from omniopd.methods.baseline import baselined_pihat_F
from omniopd.methods.drafts import group_relative_F_K
from omniopd.methods.imitation import imitation_rows, sample_weights
from omniopd.methods.rows import append_rows
from omniopd.pipeline import ChunkAudit
from omniopd.rollouts import generate_rollouts
from omniopd.similarity import (TokenF1Similarity, build_similarity, number_f1, numbers_in, numbers_similarity,
                                edit_similarity)
from providers.base import TeacherSample
from tests.tiny import tiny_llama

# G = 2: rows 0, 1 are prompt 0; rows 2, 3 prompt 1. Six chunks, two of them in row 0 and in row 3.
ROWS = torch.tensor([0, 0, 1, 2, 3, 3])
PIHAT = torch.tensor([0.2, 0.4, 0.9, 0.5, 0.1, 0.3], dtype=torch.float64)


def test_no_baseline_is_the_paper():
    assert torch.equal(baselined_pihat_F(PIHAT, ROWS, 2, "none"), PIHAT.double())


def test_group_baseline_subtracts_the_prompt_mean():
    # prompt 0: mean(0.2, 0.4, 0.9) = 0.5; prompt 1: mean(0.5, 0.1, 0.3) = 0.3
    a = baselined_pihat_F(PIHAT, ROWS, 2, "group")
    assert a.tolist() == pytest.approx([-0.3, -0.1, 0.4, 0.2, -0.2, 0.0])
    assert float(a[:3].sum()) == pytest.approx(0.0) and float(a[3:].sum()) == pytest.approx(0.0)


def test_leave_one_out_uses_the_other_completions_only():
    # row 0's chunks vs row 1's (0.9); row 1 vs row 0's mean 0.3; row 2 vs row 3's mean 0.2; row 3 vs 0.5
    a = baselined_pihat_F(PIHAT, ROWS, 2, "loo")
    assert a.tolist() == pytest.approx([-0.7, -0.5, 0.6, 0.3, -0.4, -0.2])


def test_a_chunk_without_peers_gets_no_advantage():
    lone = baselined_pihat_F(torch.tensor([0.7, 0.2, 0.6]), torch.tensor([0, 0, 3]), 2, "loo")
    assert lone.tolist() == pytest.approx([0.0, 0.0, 0.0])  # row 1 and row 2 had no audited chunk
    assert baselined_pihat_F(torch.tensor([0.7]), torch.tensor([5]), 4, "group").tolist() == [0.0]
    with pytest.raises(ValueError, match="baseline"):
        baselined_pihat_F(PIHAT, ROWS, 2, "mean")


def test_imitation_weights_sum_to_w_per_fork():
    assert sample_weights([1, 1, 1, 1], 4, 1.0) == [0.25] * 4
    assert sample_weights([3, 1], 4, 2.0) == [1.5, 0.5]
    assert sample_weights([1], 0, 1.0) == [0.0]


def test_imitation_rows_dedupe_close_with_eos_and_respect_the_budget(tiny_tok):
    s = lambda text, fin="length": TeacherSample(text=text, finish_reason=fin)  # noqa: E731
    ids = tiny_tok.encode(" 5 more apples", add_special_tokens=False)
    chunk = ChunkAudit(row=1, start=3, length=4, student_text="", teacher_texts=[], phi=[1, 1, 1, 1],
                       samples=[s(" 5 more apples"), s(" 5 more apples"), s(" 5 more apples", "stop"), s("")])
    failed = ChunkAudit(row=0, start=0, length=4, student_text="", teacher_texts=[], phi=[], failed=True)
    completions = [[9, 9, 9, 9, 9, 9], [11, 12, 13, 14, 15, 16, 17]]
    rows = imitation_rows([failed, chunk], completions, tiny_tok, weight=2.0, max_new_tokens=64)
    # two distinct token rows: the open one (twice) and the one closed by EOS; the empty sample is dropped
    assert rows.source_rows == [1, 1]
    assert rows.contexts == [[11, 12, 13], [11, 12, 13]]
    assert rows.completions == [ids, ids + [tiny_tok.eos_token_id]]
    assert rows.advantages == pytest.approx([2.0 * 2 / 4, 2.0 * 1 / 4])  # N_eff = 4 counts the empty sample
    short = imitation_rows([chunk], completions, tiny_tok, weight=1.0, max_new_tokens=5)
    assert all(len(c) <= 2 for c in short.completions)  # 5 tokens from the completion start, prefix is 3


def test_group_relative_draft_advantages():
    s = torch.tensor([[0.5, 0.2, 0.8], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert group_relative_F_K(s).flatten().tolist() == pytest.approx([0.0, -0.3, 0.3, 0.0, 0.0, 0.0])


def test_numbers_are_normalised_and_located():
    assert [n for n, _, _ in numbers_in("1,000 apples at 2.50 and 7.0, then 007 and 3,4.")] == \
        ["1000", "2.5", "7", "7", "3", "4"]
    assert numbers_in("x 12 y") == [("12", 2, 4)]


def test_number_f1_one_wrong_number_costs_a_third_of_three():
    assert number_f1("so 3 + 5 = 8 apples", "so 3 + 5 = 8 apples") == 1.0
    assert number_f1("so 3 + 5 = 9 apples", "so 3 + 5 = 8 apples") == pytest.approx(2 / 3)  # LCS 2 of 3, 3
    assert number_f1("the result = 9 apples", "the result = 8 apples") == 0.0
    assert number_f1("she has apples", "she has pears") is None  # no numbers: phi falls back to edit
    assert number_f1("she has 4 apples", "she has apples") == 0.0


def test_number_f1_is_order_aware_and_forgives_chunk_edges():
    assert number_f1("5 then 3 ", "3 then 5 ") == pytest.approx(0.5)  # LCS 1: P = R = 1/2
    # a teacher number past the student chunk's end (trim slack) is outside the chunk
    assert number_f1("so 3 + 5 =", "so 3 + 5 = 8") == 1.0
    # the student chunk was cut mid-number ("1" of "12"): it matches the number it starts
    assert number_f1("the total is 1", "the total is 12 cents") == 1.0
    assert number_f1("the total is 1 ", "the total is 12 cents") == 0.0  # a whole "1" is a wrong number


def test_numbers_similarity_is_number_f1_times_edit():
    a, b = "so 3 + 5 = 9 apples", "so 3 + 5 = 8 apples"
    assert numbers_similarity(a, b) == pytest.approx(2 / 3 * edit_similarity(a, b))
    assert numbers_similarity("she has apples", "she has pears") == pytest.approx(edit_similarity("she has apples", "she has pears"))
    assert build_similarity("numbers")(["x 1 y"], [["x 1 y", "x 2 y"]]) == [[1.0, 0.0]]


def test_token_f1_on_student_token_ids(tiny_tok):
    phi = build_similarity("token_f1", tokenizer=tiny_tok)
    assert isinstance(phi, TokenF1Similarity)
    a, b = "Tom has 3 apples", "Tom has 5 apples"
    ta, tb = tiny_tok.encode(a, add_special_tokens=False), tiny_tok.encode(b, add_special_tokens=False)
    common = len(set(ta) & set(tb))  # all ids distinct here
    assert len(set(ta)) == len(ta) and len(set(tb)) == len(tb)
    p, r = common / len(tb), common / len(ta)
    assert phi([a], [[b, a, ""]]) == [[pytest.approx(2 * p * r / (p + r)), 1.0, 0.0]]
    # phi runs on the pipeline's scorer thread: it must not share the tokenizer's (mutable) padding state
    tiny_tok.backend_tokenizer.enable_padding(length=40)
    assert phi([a], [[b]]) == [[pytest.approx(2 * p * r / (p + r))]]
    tiny_tok.backend_tokenizer.no_padding()
    with pytest.raises(ValueError, match="tokenizer"):
        build_similarity("token_f1")


def test_knobs_are_validated():
    cfg = build_config(None, {"method.pihat_baseline": "loo", "method.fork_imitation": 0.5, "method.student_drafts": 2,
                              "scorer.similarity": "numbers"})
    assert (cfg.method.pihat_baseline, cfg.method.fork_imitation, cfg.method.student_drafts) == ("loo", 0.5, 2)
    with pytest.raises(ConfigError, match="pihat_baseline"):
        build_config(None, {"method.pihat_baseline": "mean"})
    with pytest.raises(ConfigError, match="fork_imitation"):
        build_config(None, {"method.fork_imitation": -1})
    with pytest.raises(ConfigError, match="student_drafts"):
        build_config(None, {"method.student_drafts": -1})
    with pytest.raises(ConfigError, match="pihat_weight"):
        build_config(None, {"method.pihat_weight": -0.5})
    with pytest.raises(ConfigError, match="nothing to learn"):
        build_config(None, {"method.pihat_weight": 0.0, "method.fork_imitation": 0.0})
    assert build_config(None, {"method.pihat_weight": 0.0}).method.fork_imitation == 2.0
    # white-box methods ignore the black-box signals (as they ignore --beta): the defaults do not stop --method opd
    assert build_config(None, {"method.name": "opd"}).method.name == "opd"


def test_default_signal_and_paper_loss():
    """The default is the lab's best black-box arm; --paper-loss is the paper's signal; explicit knobs still win."""
    assert build_config(None, {}).method.name == "sft"  # the measured default recipe
    assert build_config(None, {"method.paper_loss": True}).method.name == "omniopd"  # the paper, one flag away
    d = build_config(None, {"method.name": "omniopd"})
    assert (d.method.pihat_baseline, d.method.fork_imitation, d.method.student_drafts) == ("loo", 2.0, 0)
    assert (d.scorer.similarity, d.teacher.samples, d.teacher.token_factor) == ("numbers", 1, 4.0)
    p = build_config(None, {"method.paper_loss": True})
    assert (p.method.pihat_baseline, p.method.fork_imitation, p.method.student_drafts) == ("none", 0.0, 0)
    assert (p.scorer.similarity, p.teacher.samples, p.teacher.token_factor) == ("embedding", 10, 1.3)
    e = build_config(None, {"method.paper_loss": True, "scorer.similarity": "edit", "teacher.samples": 4,
                            "method.pihat_baseline": "loo"})
    assert (e.scorer.similarity, e.teacher.samples, e.method.pihat_baseline, e.method.fork_imitation) == ("edit", 4, "loo", 0.0)
    assert build_config(None, {"method.fork_imitation": 0.0}).teacher.token_factor == 1.3  # no imitation: chunk-length
    # the resolved values are what a run saves, so a resumed run or a replay sees the same signal
    import dataclasses as dc
    assert dc.replace(d, learner=dc.replace(d.learner, max_steps=9)).teacher.samples == 1


def test_append_rows_keeps_the_batch_and_scores_new_rows(tiny_tok):
    model = tiny_llama(tiny_tok, seed=0)
    torch.manual_seed(0)
    msgs = [[{"role": "user", "content": "Tom has 3 apples."}], [{"role": "user", "content": "Add 7 and 5."}]]
    r = generate_rollouts(model, tiny_tok, msgs, max_new_tokens=6)
    ctx, comp = r.completion_ids[1, :2].tolist(), [5, 6, 7, 8, 9, 10, 11, 12]
    out = append_rows(r, [1], [ctx], [comp], tiny_tok, model)
    assert out.completion_ids.shape == (3, 8) and out.prompts[2] == msgs[1]
    for b in range(2):  # original rows are untouched (prompt, completion, recorded log-probs)
        n = r.lengths[b]
        assert out.prompt_ids[b][out.prompt_mask[b].bool()].tolist() == r.prompt_ids[b][r.prompt_mask[b].bool()].tolist()
        assert torch.equal(out.completion_ids[b, :n], r.completion_ids[b, :n])
        assert torch.equal(out.logprobs_B_T[b, :n], r.logprobs_B_T[b, :n])
    prompt = r.prompt_ids[1][r.prompt_mask[1].bool()].tolist() + ctx
    assert out.prompt_ids[2][out.prompt_mask[2].bool()].tolist() == prompt
    with torch.no_grad():  # the new row's behaviour log-probs are the student's own
        logits = model(input_ids=torch.tensor([prompt + comp])).logits[0, len(prompt) - 1:-1]
    expect = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(comp).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(out.logprobs_B_T[2], expect, atol=1e-4)
