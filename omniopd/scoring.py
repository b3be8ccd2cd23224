"""Chunk weights from teacher agreement (DESIGN §1.4): the pure math.

For one audited chunk with N_eff usable teacher samples:

    k    = sum_i phi(student chunk, teacher sample_i)      soft count of agreement, in [0, N_eff]
    pibar = exp(mean log-prob of the chunk's tokens)       the student's own confidence (prior mean)
    pihat = (k + alpha * pibar) / (N_eff + alpha)          Dirichlet-Multinomial posterior mean

pihat is in [0, 1] and is a constant for the learner (computed without gradients). N_eff = 0
(every teacher sample failed) gives pihat = pibar; alpha = 0 with N_eff = 0 is undefined and
also falls back to pibar, so a teacher outage never produces a NaN weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def pibar_F(chunk_logprob_sums_F: torch.Tensor, chunk_lengths_F: torch.Tensor) -> torch.Tensor:
    """Geometric-mean token probability per chunk: exp(sum log p / length)."""
    return torch.exp(chunk_logprob_sums_F / chunk_lengths_F.clamp(min=1))


def pihat_F(k_F: torch.Tensor, n_eff_F: torch.Tensor, pibar_F: torch.Tensor, alpha: float) -> torch.Tensor:
    """Posterior chunk weight (k + alpha*pibar) / (N_eff + alpha), with N_eff = 0 -> pibar."""
    k_F, n_eff_F, pibar_F = k_F.double(), n_eff_F.double(), pibar_F.double()
    denom = n_eff_F + alpha
    post = (k_F + alpha * pibar_F) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.where(n_eff_F > 0, post, pibar_F).clamp(0.0, 1.0)


def chunk_weight(k: float, n_eff: int, pibar: float, alpha: float) -> float:
    """Scalar form of `pihat_F`, for reports and tests."""
    if n_eff <= 0:
        return min(max(pibar, 0.0), 1.0)
    return min(max((k + alpha * pibar) / (n_eff + alpha), 0.0), 1.0)


def k_F(phi_rows: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, N_eff) per chunk from ragged rows of phi values (one row per chunk)."""
    k = torch.tensor([float(sum(r)) for r in phi_rows], dtype=torch.float64)
    n = torch.tensor([len(r) for r in phi_rows], dtype=torch.float64)
    return k, n


def trim_to_chars(text: str, n_chars: int, slack: float) -> str:
    """Bound a teacher continuation to about the student chunk's length before phi.

    Teacher and student tokenizers differ, so the teacher is asked for ceil(1.3*C) of its own
    tokens and the text is cut here to len(student chunk) * (1 + slack) characters, at the
    last whitespace inside that limit when there is one (a cut word would cost edit distance
    and ROUGE for nothing).
    """
    limit = max(1, math.ceil(n_chars * (1.0 + slack)))
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return cut[:space] if space > limit // 2 else cut
