"""Sign-Gated OPD (arXiv 2606.09304): a binary verifier decides where to trust the teacher.

Two parts, both from the paper's summary; the formulas are our reading (see the README, "Methods").

**Sign-consistency gate.** A verifier marks each completion correct (1) or wrong (0). Within a
prompt's group of G completions its direction is group-relative,

    dir_i = sign(r_i - mean_group r)        (+1 correct in a mixed group, -1 wrong, 0 if all agree)

Per token the OPD teacher signal d_t = log pi_T - log pi_old is scaled by

    lambda_t = lambda_agree     (1.8)  where dir_i != 0 and sign(d_t) == dir_i   (extrapolate)
             = lambda_disagree  (1.0)  where dir_i != 0 and sign(d_t) != dir_i  (interpolate)
             = 1                       where dir_i == 0 (the group agrees: no gate)

and A_t = lambda_t * d_t.

**Phased teacher sampling.** For the first P steps (default 10 % of the run) a share

    rho(step) = rho0 * (1 - step / P),   rho0 = 0.5,   0 from step P on

of each prompt's completions is replaced by teacher completions the verifier passed, trained
with plain log-likelihood (advantage 1 on their tokens).
"""

from __future__ import annotations

import math

import torch

from omniopd.methods.opd import teacher_signal_B_T


def verifier_direction_B(rewards_B: torch.Tensor, group_size: int, include_B: torch.Tensor | None = None) -> torch.Tensor:
    """Group-relative verifier direction per completion: sign(r - group mean), in {-1, 0, 1}.

    `rewards_B` is ordered prompt-major (G consecutive completions per prompt, TRL's layout).
    Rows with `include_B` False (teacher-written rows, rows the verifier could not judge) get
    direction 0 and do not count in their group's mean.
    """
    r = rewards_B.detach().float()
    if r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    inc = torch.ones_like(r) if include_B is None else include_B.float()
    inc = inc * (~torch.isnan(r)).float()
    r = torch.nan_to_num(r, nan=0.0)
    grouped, ginc = r.view(-1, group_size), inc.view(-1, group_size)
    mean = (grouped * ginc).sum(1, keepdim=True) / ginc.sum(1, keepdim=True).clamp(min=1.0)
    centred = (grouped - mean) * ginc
    return torch.sign(torch.where(centred.abs() < 1e-6, torch.zeros_like(centred), centred)).view(-1)


def sign_gate_B_T(
    signal_B_T: torch.Tensor,
    direction_B: torch.Tensor,
    lambda_agree: float = 1.8,
    lambda_disagree: float = 1.0,
) -> torch.Tensor:
    """lambda_t per token (see module doc); 1 on rows whose direction is 0."""
    d_sign = torch.sign(signal_B_T.detach().float())
    direction = direction_B.detach().float().unsqueeze(1).expand_as(d_sign)
    agree = (d_sign == direction) & (direction != 0)
    gate = torch.where(agree, torch.full_like(d_sign, lambda_agree), torch.full_like(d_sign, lambda_disagree))
    return torch.where(direction == 0, torch.ones_like(gate), gate)


def sg_opd_advantages_B_T(
    teacher_logp_B_T: torch.Tensor,
    old_logp_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    direction_B: torch.Tensor,
    lambda_agree: float = 1.8,
    lambda_disagree: float = 1.0,
) -> torch.Tensor:
    """A_t = lambda_t * (log pi_T - log pi_old) on valid tokens."""
    d = teacher_signal_B_T(teacher_logp_B_T, old_logp_B_T, mask_B_T)
    return sign_gate_B_T(d, direction_B, lambda_agree, lambda_disagree) * d


def phased_ratio(step: int, phase_steps: int, rho0: float = 0.5) -> float:
    """rho(step) = rho0 * (1 - step / P) for step < P, else 0 (P = 0 disables the phase)."""
    if phase_steps <= 0 or step >= phase_steps:
        return 0.0
    return rho0 * (1.0 - step / phase_steps)


def phase_steps_for(total_steps: int, fraction: float = 0.1) -> int:
    """P from the run length: ceil(fraction * total steps) (default 10 %), 0 if fraction is 0."""
    return 0 if fraction <= 0 else max(1, math.ceil(fraction * total_steps))


def teacher_slots(rho: float, group_size: int) -> int:
    """How many of a prompt's G completions the teacher replaces: round(rho * G), at most G - 1.

    At least one on-policy completion stays in every group (our reading), so the OPD signal
    and the group-relative verifier direction are never empty for a prompt.
    """
    n = math.floor(rho * group_size + 0.5)
    return max(0, min(n, group_size - 1))


def imitation_advantages_B_T(mask_B_T: torch.Tensor, is_teacher_B: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Advantage `weight` on the valid tokens of teacher-written rows (plain log-likelihood), else 0."""
    rows = is_teacher_B.to(torch.float32).unsqueeze(1)
    return weight * rows * mask_B_T.to(torch.float32)
