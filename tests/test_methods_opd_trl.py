"""Our sampled-token OPD loss and TRL's DistillationTrainer reverse KL have the same gradient.

Our `opd` trains -A_t * log pi_theta(y_t) with A_t = log pi_T(y_t) - log pi_old(y_t) on the
student's own sampled token. TRL's `DistillationTrainer` (beta = 1) minimises the per-token
reverse KL(pi_theta || pi_T) over the full vocabulary. The first is an unbiased one-sample
estimate of the second's gradient; taking its expectation over y_t ~ pi_theta exactly (every
vocabulary token at every position, weighted by pi_theta) must give TRL's gradient.
"""

import torch
from trl.trainer.distillation_trainer import _chunked_divergence_loss

from omniopd.methods.opd import opd_advantages_B_T, policy_gradient_loss_B_T
from tests.tiny import tiny_llama, tiny_tokenizer


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_expected_opd_gradient_equals_trl_reverse_kl_gradient():
    tok = tiny_tokenizer()
    student, teacher = tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)
    prompt = tok.encode("Tom has 3 apples")
    comps = [tok.encode(" and buys 5 more."), tok.encode(" so he has 8")]
    T = max(map(len, comps))
    ids = torch.tensor([prompt + c + [tok.pad_token_id] * (T - len(c)) for c in comps])
    attn = torch.tensor([[1] * (len(prompt) + len(c)) + [0] * (T - len(c)) for c in comps])
    mask = attn[:, -T:]

    # TRL: chunked reverse KL from last hidden states and lm_head weights, mean over valid tokens
    h_s = student.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, -T - 1:-1]
    with torch.no_grad():
        h_t = teacher.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, -T - 1:-1]
    trl_loss, _, n_valid = _chunked_divergence_loss(h_s, h_t, student.lm_head.weight, teacher.lm_head.weight, mask, beta=1.0)
    g_trl = _grads(student, trl_loss)

    # ours: E_{v ~ pi_theta}[ -A(v) * log pi_theta(v) ] at every valid position, exactly
    logp_s = torch.log_softmax(student(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1].float(), -1)
    with torch.no_grad():
        logp_t = torch.log_softmax(teacher(input_ids=ids, attention_mask=attn).logits[:, -T - 1:-1].float(), -1)
    B, _, V = logp_s.shape
    every_B_TV = logp_s.reshape(B, T * V)
    mask_TV = mask.unsqueeze(-1).expand(B, T, V).reshape(B, T * V)
    adv = opd_advantages_B_T(logp_t.reshape(B, T * V), every_B_TV.detach(), mask_TV)
    per_token = policy_gradient_loss_B_T(every_B_TV, adv) * every_B_TV.detach().exp()
    ours = (per_token * mask_TV).sum() / mask.sum()
    g_ours = _grads(student, ours)

    assert int(n_valid) == int(mask.sum())
    assert g_trl.abs().max() > 1e-4  # a real gradient, not two zeros
    assert torch.allclose(g_ours, g_trl, atol=1e-5, rtol=1e-3), (g_ours - g_trl).abs().max()
