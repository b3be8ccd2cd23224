"""Standard on-policy distillation (Thinking Machines; GKD arXiv 2306.13649, lambda = 1).

The baseline the OmniOPD paper compares against. The student samples y ~ pi_old; per sampled
token the advantage is the teacher's log-probability minus the behaviour student's:

    A_t = log pi_T(y_t | y_<t) - log pi_old(y_t | y_<t)          (detached, coefficient 1)

trained with the policy-gradient loss -A_t * log pi_theta(y_t) (TRL's GRPO loss with these
per-token advantages, one update per batch, beta = 0: no reference KL). In expectation over
y_t ~ pi_theta this is the gradient of the per-token reverse KL(pi_theta || pi_T), which is
what TRL's `DistillationTrainer` minimises over the full vocabulary (its beta = 1);
tests/test_methods_opd_trl.py checks the two gradients agree on a tiny model.
"""

from __future__ import annotations

import torch


def teacher_signal_B_T(teacher_logp_B_T: torch.Tensor, old_logp_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """d_t = log pi_T - log pi_old on valid tokens, 0 on padding, detached (float32)."""
    d = teacher_logp_B_T.detach().float() - old_logp_B_T.detach().float()
    return d * mask_B_T.to(d.dtype)


def opd_advantages_B_T(teacher_logp_B_T: torch.Tensor, old_logp_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """Per-token OPD advantages: exactly the teacher signal d_t."""
    return teacher_signal_B_T(teacher_logp_B_T, old_logp_B_T, mask_B_T)


def policy_gradient_loss_B_T(logp_B_T: torch.Tensor, advantages_B_T: torch.Tensor) -> torch.Tensor:
    """-A_t * log pi_theta(y_t): the per-token loss TRL's GRPO loss reduces to on a first pass.

    On a first pass TRL's ratio exp(logp - logp_old) is 1 with gradient grad logp, so TRL's
    -ratio * A has the same gradient as this (the values differ by a constant). Used by tests.
    """
    return -advantages_B_T.detach() * logp_B_T
