"""Trust-Region OPD (arXiv 2606.01249): learn from the teacher only where its signal is trusted.

Per sampled token (pi_S the behaviour student, pi_T the teacher):

    p_t = min(pi_T(y_t) / pi_S(y_t), 1)                       trust
    trusted_t ~ Bernoulli(p_t)   (option: p_t >= threshold)   membership
    trusted:  A_t = log pi_T(y_t) - log pi_S(y_t)              the OPD signal
    outlier:  forward KL(q_T || pi_theta) over the teacher's top-k tokens (k = 64),
              q_T the teacher's top-k probabilities renormalised to sum 1      (default)
              | masked: no loss on the token                                  (option)
              | clipped: A_t = max(log pi_T - log pi_S, -clip)                (option)

Off-policy guidance: per prompt one teacher completion; its first share s(step) of tokens is
imitated with weight beta(step) (plain log-likelihood), and the student continues from that
prefix as an ordinary on-policy rollout. s goes 0.5 -> 0 and beta 0.001 -> 0, both cosine over
the run.

Our reading where the sources are silent: the trust uses the behaviour log-probabilities
recorded at rollout time; the clip bound (2 nats) and the deterministic threshold (0.5);
the student's top-k log-probabilities in the forward KL are full-vocabulary log-softmax values
(not renormalised), so the per-token forward KL is >= 0 and is 0 only when the student puts
exactly q_T on the teacher's top-k.
"""

from __future__ import annotations

import math

import torch

from omniopd.methods.opd import teacher_signal_B_T

OUTLIER_MODES = ("forward_kl", "mask", "clip")
MEMBERSHIP_MODES = ("bernoulli", "threshold")


def trust_B_T(teacher_logp_B_T: torch.Tensor, student_logp_B_T: torch.Tensor) -> torch.Tensor:
    """p = min(pi_T / pi_S, 1) per sampled token, computed in log space (detached, float32)."""
    d = teacher_logp_B_T.detach().float() - student_logp_B_T.detach().float()
    return torch.exp(torch.clamp(d, max=0.0))


def trust_membership_B_T(
    trust_B_T: torch.Tensor,
    mode: str = "bernoulli",
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean (B, T): which tokens are trusted. Bernoulli(p) draws use `generator` when given."""
    if mode == "bernoulli":
        return torch.bernoulli(trust_B_T.float().clamp(0.0, 1.0), generator=generator).bool()
    if mode == "threshold":
        return trust_B_T >= threshold
    raise ValueError(f"unknown trust membership {mode!r}; use one of {MEMBERSHIP_MODES}")


def tropd_advantages_B_T(
    teacher_logp_B_T: torch.Tensor,
    old_logp_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    trusted_B_T: torch.Tensor,
    outlier: str = "forward_kl",
    clip: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, forward-KL mask): the policy-gradient part and where the forward KL applies.

    Trusted valid tokens get d_t; outliers get 0 ('forward_kl', 'mask') or max(d_t, -clip)
    ('clip'). The second tensor is 1 on the valid outlier tokens in 'forward_kl' mode, else 0.
    """
    if outlier not in OUTLIER_MODES:
        raise ValueError(f"unknown outlier mode {outlier!r}; use one of {OUTLIER_MODES}")
    d = teacher_signal_B_T(teacher_logp_B_T, old_logp_B_T, mask_B_T)
    valid = mask_B_T.to(torch.float32)
    trusted = trusted_B_T.to(torch.float32) * valid
    outliers = (1.0 - trusted_B_T.to(torch.float32)) * valid
    adv = d * trusted
    if outlier == "clip":
        adv = adv + torch.clamp(d, min=-clip) * outliers
    fkl_mask = outliers if outlier == "forward_kl" else torch.zeros_like(outliers)
    return adv, fkl_mask


def forward_kl_topk_B_T(student_topk_logp_B_T_K: torch.Tensor, teacher_topk_logp_B_T_K: torch.Tensor) -> torch.Tensor:
    """Per-token KL(q_T || pi_theta) over the teacher's top-k ids; differentiable in the student.

    q_T = softmax of the teacher's top-k log-probabilities (renormalised over the k ids);
    the student's values are its full-vocabulary log-probabilities at those ids.
    """
    log_q = torch.log_softmax(teacher_topk_logp_B_T_K.detach().float(), dim=-1)
    q = log_q.exp()
    return (q * (log_q - student_topk_logp_B_T_K.float())).sum(-1)


def cosine_anneal(step: int, total_steps: int, start: float) -> float:
    """start * (1 + cos(pi * step / total)) / 2: `start` at step 0, 0 at step `total`."""
    if total_steps <= 0:
        return 0.0
    x = min(max(step / total_steps, 0.0), 1.0)
    return start * 0.5 * (1.0 + math.cos(math.pi * x))


def guidance_share(step: int, total_steps: int, start: float = 0.5) -> float:
    """Share of the teacher completion used as the imitated prefix at `step` (0.5 -> 0)."""
    return cosine_anneal(step, total_steps, start)


def guidance_weight(step: int, total_steps: int, start: float = 1e-3) -> float:
    """Imitation weight beta on the teacher prefix at `step` (0.001 -> 0)."""
    return cosine_anneal(step, total_steps, start)


def guidance_prefix_len(n_teacher_tokens: int, share: float) -> int:
    """Teacher tokens kept as the prefix: floor(share * length)."""
    return max(0, min(n_teacher_tokens, math.floor(share * n_teacher_tokens)))
