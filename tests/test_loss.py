"""The loss as a pure function (omniopd/loss.py) and the sliced head (omniopd/head.py), by hand.

Hand-computed values as tests/test_scoring.py does for pi_hat; then the head against the full
(B, T, V) log-softmax it replaces, and the learner's loss against the formula it had before
the rewrite (TRL's "dapo" policy loss + beta * exact KL on unaudited tokens), to 1e-5.
"""

import math

import pytest
import torch

from omniopd.head import head_terms, slice_tokens_for
from omniopd.learner import exact_kl_B_T
from omniopd.loss import omniopd_loss, policy_term_B_T


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_first_pass_loss_is_minus_advantages_plus_anchor_by_hand():
    logp = torch.log(_t([[0.5, 0.25, 0.8]])).requires_grad_(True)
    adv = _t([[0.3, 0.3, 0.0]])
    mask = _t([[1, 1, 1]])
    audit = torch.tensor([[True, True, False]])
    kl = _t([[9.0, 9.0, 0.2]])  # audited positions' KL must not count
    loss, stats = omniopd_loss(logp, logp.detach(), adv, mask, audit, normaliser=3.0, beta=0.1, kl_B_T=kl)
    # ratio = 1: policy = -(0.3 + 0.3) / 3 = -0.2; anchor = 0.1 * 0.2 / 3
    assert loss.item() == pytest.approx(-0.2 + 0.1 * 0.2 / 3, abs=1e-7)
    assert stats["policy_loss"].item() == pytest.approx(-0.2, abs=1e-7)
    assert stats["kl_loss"].item() == pytest.approx(0.02 / 3, abs=1e-8)
    assert stats["kl"].item() == pytest.approx(0.2, abs=1e-7)  # mean over the one anchored token
    assert stats["anchored_tokens"].item() == 1
    # the paper's chunk term: -(0.3 log .5 + 0.3 log .25) / 3
    assert stats["chunk_loss"].item() == pytest.approx(-(0.3 * math.log(0.5) + 0.3 * math.log(0.25)) / 3, abs=1e-6)
    (g,) = torch.autograd.grad(loss, logp)
    assert g[0].tolist() == pytest.approx([-0.1, -0.1, 0.0], abs=1e-7)  # -A / normaliser


def test_clipping_by_hand():
    # ratios 1.5 (A > 0: clipped to 1.2, no gradient), 0.5 (A > 0: unclipped), 0.5 (A < 0: clipped to 0.8)
    old = torch.zeros(1, 3)
    logp = torch.log(_t([[1.5, 0.5, 0.5]])).requires_grad_(True)
    adv = _t([[1.0, 1.0, -2.0]])
    per_token, ratio = policy_term_B_T(logp, old, adv, 0.2, 0.2)
    assert per_token[0].tolist() == pytest.approx([-1.2, -0.5, 1.6], abs=1e-6)
    loss, stats = omniopd_loss(logp, old, adv, torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool), normaliser=1.0)
    assert loss.item() == pytest.approx(-1.2 - 0.5 + 1.6, abs=1e-6)
    assert stats["clip_ratio"].item() == pytest.approx(2 / 3)
    (g,) = torch.autograd.grad(loss, logp)
    # d(-r A)/dlogp = -r A where unclipped, 0 where clipped
    assert g[0].tolist() == pytest.approx([0.0, -0.5, 0.0], abs=1e-6)


def test_gate_scales_policy_and_extra_not_the_anchor():
    logp = torch.zeros(1, 3, requires_grad=True)
    adv = _t([[1.0, 1.0, 1.0]])
    extra = _t([[0.5, 0.5, 0.5]])
    gate = _t([[2.0, 0.0, 1.0]])
    kl = _t([[0.3, 0.3, 0.3]])
    audit = torch.tensor([[True, False, False]])
    mask = _t([[1, 1, 0]])  # the third token is padding
    loss, stats = omniopd_loss(logp, logp.detach(), adv, mask, audit, normaliser=2.0, beta=1.0, kl_B_T=kl,
                               gate_B_T=gate, extra_B_T=extra)
    # policy+extra: (2 * (-1 + 0.5) + 0 * (-1 + 0.5)) / 2 = -0.5; anchor: token 2 only, 0.3 / 2
    assert loss.item() == pytest.approx(-0.5 + 0.15, abs=1e-7)
    assert stats["extra_loss"].item() == pytest.approx(2 * 0.5 / 2, abs=1e-7)


def test_beta_without_kl_is_an_error():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="kl_B_T"):
        omniopd_loss(x, x, x, x, x.bool(), normaliser=1.0, beta=0.1)


def _reference(h, w, b, y, hr, wr, ids, temperature):
    lp = torch.log_softmax((h @ w.t() + b) / temperature, -1)
    lr = torch.log_softmax(hr @ wr.t() / temperature, -1)
    return lp, lr


@pytest.mark.parametrize("slice_tokens", [1, 4, 100])
def test_sliced_head_equals_full_vocab_values_and_gradients(slice_tokens):
    torch.manual_seed(0)
    N, H, V, K, temp = 13, 8, 37, 4, 0.7
    h = torch.randn(N, H, requires_grad=True)
    w = torch.randn(V, H, requires_grad=True)
    b = torch.randn(V, requires_grad=True)
    hr, wr = torch.randn(N, H), torch.randn(V, H)
    y = torch.randint(0, V, (N,))
    ids = torch.stack([torch.randperm(V)[:K] for _ in range(N)])
    kl_mask = torch.rand(N) > 0.4
    out = head_terms(h, w, y, bias_V=b, ref_hidden_N_H=hr, ref_weight_V_H=wr, kl_mask_N=kl_mask, ids_N_K=ids,
                     temperature=temp, slice_tokens=slice_tokens)
    lp, lr = _reference(h, w, b, y, hr, wr, ids, temp)
    kl_ref = exact_kl_B_T(lr, lp) * kl_mask
    assert torch.allclose(out.kl_N, kl_ref, atol=1e-5)
    assert torch.allclose(out.logp_N, lp.gather(1, y[:, None]).squeeze(1), atol=1e-5)
    assert torch.allclose(out.entropy_N, -(lp.exp() * lp).sum(-1), atol=1e-5)
    assert torch.allclose(out.ids_logp_N_K, lp.gather(1, ids), atol=1e-5)
    g1, g2, g3 = torch.randn(N), torch.randn(N), torch.randn(N, K)
    ours = torch.autograd.grad((out.logp_N * g1).sum() + (out.kl_N * g2).sum() + (out.ids_logp_N_K * g3).sum(), [h, w, b])
    full = torch.autograd.grad((lp.gather(1, y[:, None]).squeeze(1) * g1).sum() + (kl_ref * g2).sum()
                               + (lp.gather(1, ids) * g3).sum(), [h, w, b])
    for a, c in zip(ours, full):
        assert torch.allclose(a, c, atol=1e-5), (a - c).abs().max()


def test_slice_size_follows_the_vocabulary():
    assert slice_tokens_for(151_936) == (1 << 24) // 151_936
    assert slice_tokens_for(10, tile_elements=5) == 1


def test_learner_loss_equals_the_full_vocab_formula(tiny_tok):
    """compute_loss == TRL dapo policy loss (ratio 1) + beta * exact KL on unaudited tokens, and gradients."""
    import copy

    from datasets import Dataset
    from trl import GRPOConfig

    from omniopd.learner import OmniOPDTrainer
    from tests.tiny import tiny_llama

    torch.manual_seed(0)
    student = tiny_llama(tiny_tok, seed=0)
    with torch.no_grad():
        for p in student.parameters():  # move away from the reference so the KL is not zero
            p.add_(0.05 * torch.randn_like(p))
    base = tiny_llama(tiny_tok, seed=0)
    reference_student = copy.deepcopy(student)
    args = GRPOConfig(output_dir="/tmp/unused", per_device_train_batch_size=4, num_generations=2, beta=0.0,
                      loss_type="dapo", use_cpu=True, report_to=[], max_steps=1, temperature=0.9,
                      remove_unused_columns=False, bf16=False)
    trainer = OmniOPDTrainer(model=student, args=args, train_dataset=Dataset.from_list([{"prompt": "x"}] * 4),
                             processing_class=tiny_tok, pipeline=object(), kl_beta=0.3, ref_model=base)
    B, P, T = 4, 5, 7
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, len(tiny_tok), (B, P), generator=g)
    completion_ids = torch.randint(3, len(tiny_tok), (B, T), generator=g)
    completion_mask = torch.ones(B, T, dtype=torch.long)
    completion_mask[1, 5:] = 0
    completion_mask[3, 2:] = 0
    audit = torch.zeros(B, T, dtype=torch.bool)
    audit[0, 1:4] = True
    audit[2, 0:3] = True
    adv = torch.where(audit, torch.rand(B, T, generator=g), torch.zeros(B, T))
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones(B, P, dtype=torch.long),
              "completion_ids": completion_ids, "completion_mask": completion_mask, "advantages": adv,
              "audit_mask": audit, "behaviour_logps": torch.zeros(B, T),
              "num_items_in_batch": completion_mask.sum()}
    trainer.model.eval()  # eval mode: normaliser = completion tokens, no accumulation
    loss = trainer.compute_loss(trainer.model, inputs)
    (g_ours,) = torch.autograd.grad(loss, [trainer.model.model.embed_tokens.weight])

    ids = torch.cat([prompt_ids, completion_ids], 1)
    attn = torch.cat([inputs["prompt_mask"], completion_mask], 1)
    lp = torch.log_softmax(reference_student(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1] / 0.9, -1)
    with torch.no_grad():
        lr = torch.log_softmax(tiny_llama(tiny_tok, seed=0)(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1] / 0.9, -1)
    m = completion_mask.float()
    per_token = lp.gather(-1, completion_ids[..., None]).squeeze(-1)
    ratio = torch.exp(per_token - per_token.detach())
    policy = (-ratio * adv * m).sum() / m.sum()
    kl = (exact_kl_B_T(lr, lp) * m * (~audit).float()).sum() / m.sum()
    expected = policy + 0.3 * kl
    assert kl.item() > 1e-3
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    (g_full,) = torch.autograd.grad(expected, [reference_student.model.embed_tokens.weight])
    assert torch.allclose(g_ours, g_full, atol=1e-5), (g_ours - g_full).abs().max()
