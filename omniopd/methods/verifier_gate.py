"""Verifier gate for black-box teachers (new here; no published method has it).

OmniOPD's chunk weight pi_hat says how much the teacher agrees with a student chunk. With a
task verifier (math answers via math-verify) the completion's outcome scales it:

    pi_hat' = scale_correct * pi_hat   on chunks of completions verified correct  (extrapolate, 1.8)
            = scale_wrong   * pi_hat   on chunks of completions verified wrong    (interpolate, 0.5)
            = pi_hat                   where the verifier has no verdict (no reference answer)

so agreement with the teacher on a path that reached the right answer is reinforced more,
and on a path that went wrong less. The factors are ours (1.8 mirrors SG-OPD's lambda_agree);
pi_hat' is not clipped to 1, it is a loss weight.
"""

from __future__ import annotations

import torch


def verdict_scale_B(verdict_B: torch.Tensor, scale_correct: float = 1.8, scale_wrong: float = 0.5) -> torch.Tensor:
    """Per completion: scale_correct where verdict is 1, scale_wrong where 0, 1 where NaN (none)."""
    v = verdict_B.float()
    out = torch.where(v > 0.5, torch.full_like(v, scale_correct), torch.full_like(v, scale_wrong))
    return torch.where(torch.isnan(v), torch.ones_like(v), out)


def gated_advantages_B_T(
    advantages_B_T: torch.Tensor,
    verdict_B: torch.Tensor,
    scale_correct: float = 1.8,
    scale_wrong: float = 0.5,
) -> torch.Tensor:
    """The same scaling applied to OmniOPD's (B, T) advantages (pi_hat on audited tokens, 0 elsewhere)."""
    scale = verdict_scale_B(verdict_B, scale_correct, scale_wrong).to(advantages_B_T.device)
    return advantages_B_T * scale.unsqueeze(1).to(advantages_B_T.dtype)
