"""The learner's loss as one pure function of per-token tensors (DESIGN §1.5, README "Training").

    L = [ sum_t gate_t * mask_t * (policy_t + extra_t)  +  beta * sum_t mask_t * (1 - audit_t) * KL_t ] / normaliser

    policy_t = -min(r_t * A_t, clip(r_t, 1 - eps_low, 1 + eps_high) * A_t),   r_t = exp(log pi_theta(y_t) - log pi_old(y_t))

- `A_t` are the (B, T) advantages the pipeline (or a method's signals) built: pihat on audited
  tokens and 0 elsewhere for OmniOPD; the teacher signal for opd / sg-opd / tropd.
- On a first pass `log pi_old` is `log pi_theta` detached, so r_t = 1 with gradient
  grad log pi_theta: the policy term's gradient is exactly -A_t * grad log pi_theta(y_t) (the
  paper's chunk term); the clip only acts when rollouts are reused.
- `extra_t` is a method's own differentiable per-token term (TrOPD's forward KL on outlier
  tokens); it is gated like the policy term.
- `KL_t` is the exact KL(pi_ref || pi_theta) at position t (from `omniopd.head`, which never builds
  (B, T, V) tensors); it is not gated: the anchor holds unaudited tokens whether or not the
  rollout went stale.
- `gate_t` is the blockwise drift gate (detached, mean 1), or None (all ones).
- `normaliser` is TRL's "dapo" one (completion tokens of the generation batch per accumulation
  window), so both terms sum over tokens and the paper's ratio of chunk term to anchor holds.

This is the model torchtune's `GRPOLoss` follows: tensors in, (loss, stats) out; nothing is
read from or stored on a trainer. Stats are detached 0-dim tensors, local to this process.
"""

from __future__ import annotations

import torch


def policy_term_B_T(logp_B_T: torch.Tensor, old_logp_B_T: torch.Tensor, advantages_B_T: torch.Tensor,
                    epsilon_low: float = 0.2, epsilon_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped per-token policy loss and the ratio r_t (TRL's "dapo"/"grpo" loss, per token)."""
    ratio_B_T = torch.exp(logp_B_T - old_logp_B_T)
    clipped_B_T = torch.clamp(ratio_B_T, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss_B_T = -torch.min(ratio_B_T * advantages_B_T, clipped_B_T * advantages_B_T)
    return loss_B_T, ratio_B_T


def omniopd_loss(
    logp_B_T: torch.Tensor,
    old_logp_B_T: torch.Tensor,
    advantages_B_T: torch.Tensor,
    completion_mask_B_T: torch.Tensor,
    audit_mask_B_T: torch.Tensor,
    *,
    normaliser: torch.Tensor | float,
    beta: float = 0.0,
    kl_B_T: torch.Tensor | None = None,
    gate_B_T: torch.Tensor | None = None,
    extra_B_T: torch.Tensor | None = None,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, stats) for one micro-batch; see the module docstring for the formula.

    `kl_B_T` is required when `beta > 0`. Stats: `policy_loss`, `chunk_loss` (-sum A*logp /
    normaliser, the paper's chunk term), `kl_loss` (beta * anchor), `kl` (mean KL over the
    anchored tokens), `extra_loss`, `clip_ratio` (share of valid tokens whose ratio was clipped
    against the advantage's sign), `anchored_tokens`.
    """
    if beta > 0 and kl_B_T is None:
        raise ValueError("omniopd_loss: beta > 0 needs kl_B_T (omniopd.head.head_terms with a reference)")
    mask_B_T = completion_mask_B_T.to(logp_B_T.dtype)
    advantages_B_T = advantages_B_T.to(logp_B_T.dtype)
    per_token_B_T, ratio_B_T = policy_term_B_T(logp_B_T, old_logp_B_T, advantages_B_T, epsilon_low, epsilon_high)
    if extra_B_T is not None:
        per_token_B_T = per_token_B_T + extra_B_T
    if gate_B_T is not None:
        per_token_B_T = per_token_B_T * gate_B_T.detach()
    policy_loss = (per_token_B_T * mask_B_T).sum() / normaliser
    zero = logp_B_T.new_zeros(())
    anchor_B_T = mask_B_T * (~audit_mask_B_T.bool()).to(mask_B_T.dtype)
    kl_loss, kl_mean = zero, zero
    if kl_B_T is not None:
        kl_sum = (kl_B_T * anchor_B_T).sum()
        kl_mean = kl_sum.detach() / anchor_B_T.sum().clamp(min=1.0)
        if beta > 0:
            kl_loss = beta * kl_sum / normaliser
    loss = policy_loss + kl_loss
    with torch.no_grad():
        valid = mask_B_T.bool()
        clipped = ((ratio_B_T < 1.0 - epsilon_low) & (advantages_B_T < 0)) | ((ratio_B_T > 1.0 + epsilon_high) & (advantages_B_T > 0))
        stats = {
            "policy_loss": policy_loss.detach(),
            "chunk_loss": -(advantages_B_T * logp_B_T.detach() * mask_B_T).sum() / normaliser,
            "kl_loss": kl_loss.detach(),
            "kl": kl_mean,
            "extra_loss": zero if extra_B_T is None else (extra_B_T.detach() * mask_B_T
                                                          * (1.0 if gate_B_T is None else gate_B_T)).sum() / normaliser,
            "clip_ratio": clipped[valid].float().mean() if valid.any() else zero,
            "anchored_tokens": anchor_B_T.sum(),
        }
    return loss, stats
