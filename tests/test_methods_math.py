"""The per-token math of OPD, SG-OPD, TrOPD, the drift gate and the verifier gate, by hand."""

import math

import pytest
import torch

from omniopd.methods.drift_gate import (
    block_gates_B_T,
    drift_gates_B_T,
    is_newline_B_T,
    newline_gates_B_T,
)
from omniopd.methods.opd import opd_advantages_B_T
from omniopd.methods.sg_opd import (
    imitation_advantages_B_T,
    phase_steps_for,
    phased_ratio,
    sg_opd_advantages_B_T,
    sign_gate_B_T,
    teacher_slots,
    verifier_direction_B,
)
from omniopd.methods.tropd import (
    forward_kl_topk_B_T,
    guidance_prefix_len,
    guidance_share,
    guidance_weight,
    trust_B_T,
    trust_membership_B_T,
    tropd_advantages_B_T,
)
from omniopd.methods.verifier_gate import gated_advantages_B_T


def close(t: torch.Tensor, expected) -> bool:
    return torch.allclose(t.float(), torch.tensor(expected, dtype=torch.float32), atol=1e-6)


# --- drift gate ---------------------------------------------------------------------------
def test_block_gate_two_blocks_by_hand():
    behav = torch.zeros(1, 4)
    cur = torch.tensor([[0.2, 0.4, -1.0, 0.0]])  # block means 0.3 and -0.5
    g = block_gates_B_T(cur, behav, torch.ones(1, 4), block=2, tau=1.0)
    g1, g2 = math.exp(-0.3), math.exp(-0.5)
    mean = (g1 + g2) / 2
    expected = torch.tensor([[g1 / mean, g1 / mean, g2 / mean, g2 / mean]])
    assert torch.allclose(g, expected, atol=1e-6)
    assert torch.allclose(g, torch.tensor([[1.099668, 1.099668, 0.900332, 0.900332]]), atol=1e-5)
    assert g.mean().item() == pytest.approx(1.0, abs=1e-6)


def test_block_gate_ignores_padding_and_keeps_mean_one_over_valid():
    behav = torch.zeros(2, 4)
    cur = torch.tensor([[0.2, 0.4, -1.0, 9.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    g = block_gates_B_T(cur, behav, mask, block=2, tau=2.0)
    # row 0: block means 0.3 and -1.0 (the padded 9.0 is ignored); row 1: 0
    raw = torch.tensor([[math.exp(-0.6)] * 2 + [math.exp(-2.0), 0.0], [1.0, 1.0, 0.0, 0.0]])
    expected = raw * (5 / raw.sum())
    assert torch.allclose(g, expected, atol=1e-6)
    assert g[mask.bool()].mean().item() == pytest.approx(1.0, abs=1e-6)
    assert g[0, 3] == 0 and g[1, 2] == 0


def test_gate_is_one_on_a_first_pass_and_detached():
    logp = torch.randn(3, 10, requires_grad=True)
    g = block_gates_B_T(logp, logp.detach().clone(), torch.ones(3, 10), block=4)
    assert torch.allclose(g, torch.ones(3, 10))
    assert not g.requires_grad


def test_newline_gate_segments_end_at_newlines():
    ids = torch.tensor([[5, 7, 5, 5]])
    nl = is_newline_B_T(ids, {7})
    assert nl.tolist() == [[False, True, False, False]]
    cur = torch.tensor([[0.2, 0.4, -1.0, 0.0]])  # lines [0, 1] and [2, 3]: means 0.3, -0.5
    g = newline_gates_B_T(cur, torch.zeros(1, 4), torch.ones(1, 4), nl)
    assert torch.allclose(g, block_gates_B_T(cur, torch.zeros(1, 4), torch.ones(1, 4), block=2))
    assert drift_gates_B_T("off", cur, cur, torch.ones(1, 4)) is None
    with pytest.raises(ValueError, match="newline"):
        drift_gates_B_T("newline", cur, cur, torch.ones(1, 4))


# --- OPD ----------------------------------------------------------------------------------
def test_opd_advantage_is_teacher_minus_behaviour_on_valid_tokens():
    adv = opd_advantages_B_T(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]]), torch.tensor([[1, 0]]))
    assert adv.tolist() == [[0.5, 0.0]]


# --- SG-OPD -------------------------------------------------------------------------------
def test_verifier_direction_is_group_relative():
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
    assert verifier_direction_B(r, 4).tolist() == [1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError):
        verifier_direction_B(torch.ones(5), 4)
    # row 0 is a teacher row (excluded); NaN = no verdict: both get 0 and leave the group mean
    r = torch.tensor([1.0, 1.0, 0.0, float("nan")])
    assert verifier_direction_B(r, 4, torch.tensor([False, True, True, True])).tolist() == [0, 1, -1, 0]


def test_sign_gate_agree_disagree_and_no_gate():
    d = torch.tensor([[0.5, -0.2, 0.0]] * 3)
    gate = sign_gate_B_T(d, torch.tensor([1.0, -1.0, 0.0]), lambda_agree=1.8, lambda_disagree=1.0)
    assert close(gate, [[1.8, 1.0, 1.0], [1.0, 1.8, 1.0], [1.0, 1.0, 1.0]])
    adv = sg_opd_advantages_B_T(
        torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -2.0]]), torch.ones(1, 2), torch.tensor([1.0]), 1.8, 0.7
    )
    assert close(adv, [[1.8, -0.7]])  # d = +1 agrees (x1.8), d = -1 disagrees (x0.7)


def test_phased_ratio_at_zero_half_and_end():
    assert phased_ratio(0, 10) == pytest.approx(0.5)
    assert phased_ratio(5, 10) == pytest.approx(0.25)
    assert phased_ratio(10, 10) == 0.0
    assert phased_ratio(3, 0) == 0.0
    assert phase_steps_for(200) == 20 and phase_steps_for(3) == 1 and phase_steps_for(5, 0.0) == 0
    assert [teacher_slots(r, 4) for r in (0.5, 0.25, 0.0)] == [2, 1, 0]
    assert teacher_slots(0.5, 1) == 0 and teacher_slots(1.0, 4) == 3
    adv = imitation_advantages_B_T(torch.tensor([[1, 1, 0], [1, 1, 1]]), torch.tensor([True, False]))
    assert adv.tolist() == [[1, 1, 0], [0, 0, 0]]


# --- TrOPD --------------------------------------------------------------------------------
def test_trust_is_one_when_the_teacher_likes_the_token_more():
    t, s = torch.tensor([[-0.5, -1.0, -2.0]]), torch.tensor([[-1.0, -1.0, -1.0]])
    p = trust_B_T(t, s)
    assert close(p, [[1.0, 1.0, math.exp(-1.0)]])
    trusted = trust_membership_B_T(torch.ones(2, 5), generator=torch.Generator().manual_seed(0))
    assert trusted.all()
    adv, fkl = tropd_advantages_B_T(t, s, torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))
    assert close(adv, [[0.5, 0.0, -1.0]]) and fkl.sum() == 0


def test_trust_near_zero_makes_outliers_and_each_outlier_mode():
    t, s = torch.tensor([[-50.0, -0.1]]), torch.tensor([[-1.0, -1.0]])
    p = trust_B_T(t, s)
    assert p[0, 0] < 1e-20 and p[0, 1] == 1.0
    trusted = trust_membership_B_T(p, generator=torch.Generator().manual_seed(0))
    assert trusted.tolist() == [[False, True]]
    mask = torch.ones(1, 2)
    adv, fkl = tropd_advantages_B_T(t, s, mask, trusted, "forward_kl")
    assert close(adv, [[0.0, 0.9]]) and fkl.tolist() == [[1.0, 0.0]]
    adv, fkl = tropd_advantages_B_T(t, s, mask, trusted, "mask")
    assert close(adv, [[0.0, 0.9]]) and fkl.sum() == 0
    adv, _ = tropd_advantages_B_T(t, s, mask, trusted, "clip", clip=2.0)
    assert close(adv, [[-2.0, 0.9]])
    assert trust_membership_B_T(torch.tensor([0.4, 0.5, 0.9]), "threshold", 0.5).tolist() == [False, True, True]


def test_bernoulli_membership_follows_p_and_the_generator():
    p = torch.full((200, 100), 0.3)
    a = trust_membership_B_T(p, generator=torch.Generator().manual_seed(7))
    b = trust_membership_B_T(p, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert a.float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_forward_kl_over_teacher_top_k_by_hand():
    teacher = torch.log(torch.tensor([[[0.5, 0.25]]]))  # q = [2/3, 1/3]
    student = torch.log(torch.tensor([[[0.5, 0.25]]])).requires_grad_(True)
    kl = forward_kl_topk_B_T(student, teacher)
    assert kl.item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    kl.sum().backward()
    assert close(student.grad, [[[-2 / 3, -1 / 3]]])  # raise the teacher's top-k
    matched = forward_kl_topk_B_T(torch.log(torch.tensor([[[2 / 3, 1 / 3]]])), teacher)
    assert matched.item() == pytest.approx(0.0, abs=1e-6)


def test_guidance_schedules_are_cosine():
    assert guidance_share(0, 100) == pytest.approx(0.5)
    assert guidance_share(50, 100) == pytest.approx(0.25)
    assert guidance_share(100, 100) == pytest.approx(0.0)
    assert guidance_weight(0, 100) == pytest.approx(1e-3)
    assert guidance_weight(50, 100) == pytest.approx(5e-4)
    assert guidance_prefix_len(41, 0.25) == 10 and guidance_prefix_len(10, 0.0) == 0


# --- verifier gate ------------------------------------------------------------------------
def test_verifier_gate_scales_pihat_by_outcome():
    # completion 0 wrong (x0.5), 1 correct (x1.8), 2 without a reference answer (unchanged)
    adv = gated_advantages_B_T(torch.tensor([[0.5, 0.0], [0.5, 0.5], [0.2, 0.0]]), torch.tensor([0.0, 1.0, float("nan")]))
    assert close(adv, [[0.25, 0.0], [0.9, 0.9], [0.2, 0.0]])


def test_drift_gate_newline_ids_come_from_the_tokenizer():
    from omniopd.methods.drift_gate import DriftGate
    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    gate = DriftGate.build("newline", tok, tau=1.0)
    nl = tok.encode("\n", add_special_tokens=False)
    assert set(nl) <= gate.newline_ids and all("\n" in tok.decode([i]) for i in gate.newline_ids)
    ids = torch.tensor([tok.encode("Tom has 3 apples.\nSo he", add_special_tokens=False)])
    cur = torch.linspace(-1, 1, ids.size(1)).unsqueeze(0)
    g = gate.gates_B_T(cur, torch.zeros_like(cur), torch.ones_like(cur), ids)
    assert g.mean().item() == pytest.approx(1.0, abs=1e-6) and len(set(g[0].tolist())) == 2  # two lines, two gates
    assert not DriftGate.build("off").enabled


def test_math_verifier_verdicts():
    pytest.importorskip("omniopd.answers")  # issue 5's extractor; runs once both are on main
    from omniopd.methods.verifier import math_verifier, verdicts_B

    v = verdicts_B(math_verifier, ["so the answer is 12.", "I get \\boxed{13}", "anything"], ["#### 12", "12", None])
    assert v[:2].tolist() == [1.0, 0.0] and math.isnan(v[2].item())
