"""Blockwise policy-drift gate (arXiv 2606.24084): down-weight tokens whose rollout went stale.

When rollouts are reused (more than one update per batch, or offline replay of recorded
episodes) the policy being trained has drifted from the one that sampled them. Per sampled
token the drift is

    d_t = log pi_current(y_t) - log pi_behaviour(y_t)          (detached)

Tokens are grouped into segments (fixed blocks of `block` tokens, or lines ending at a newline
token); per segment b of a completion

    g_b = exp(-tau * |mean_{t in b, valid} d_t|)

and every token of b gets g_b. Gates are then rescaled so that their mean over all valid
tokens of the batch is 1 (the loss keeps its scale; only its distribution over tokens moves),
are 0 on padding, and multiply the per-token loss of any method. On a first pass
(pi_current = pi_behaviour) every gate is exactly 1, so the gate changes nothing unless
rollouts are reused.

Our reading where the paper is silent: blocks are counted from the first completion token;
the mean-1 rescaling is over the whole (micro-)batch, not per completion; in the newline
variant a newline token closes (belongs to) the segment it ends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


def token_drift_B_T(logp_cur_B_T: torch.Tensor, logp_behav_B_T: torch.Tensor) -> torch.Tensor:
    """d_t = log pi_current - log pi_behaviour per sampled token, detached, float32."""
    return (logp_cur_B_T.detach().float() - logp_behav_B_T.detach().float())


def segment_gates_B_T(
    drift_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    segment_B_T: torch.Tensor,
    tau: float = 1.0,
) -> torch.Tensor:
    """Gates from per-token drift and per-token segment ids (ids in [0, T), per row).

    g = exp(-tau * |mean drift over the valid tokens of the segment|), rescaled to mean 1 over
    the valid tokens of the batch, 0 where mask is 0. A batch with no valid token gives zeros.
    """
    B, T = drift_B_T.shape
    valid = mask_B_T.to(torch.float32)
    d = drift_B_T.detach().float() * valid
    seg = segment_B_T.long().clamp(0, T - 1) + torch.arange(B, device=drift_B_T.device).unsqueeze(1) * T
    flat = seg.reshape(-1)
    sums = torch.zeros(B * T, device=d.device).index_add_(0, flat, d.reshape(-1))
    counts = torch.zeros(B * T, device=d.device).index_add_(0, flat, valid.reshape(-1))
    mean = sums / counts.clamp(min=1.0)
    g_seg = torch.exp(-tau * mean.abs())
    g = g_seg[flat].reshape(B, T) * valid
    n_valid = valid.sum()
    if n_valid == 0:
        return g
    return (g * (n_valid / g.sum().clamp(min=1e-12))).detach()


def block_segments_B_T(mask_B_T: torch.Tensor, block: int) -> torch.Tensor:
    """Segment id of each position when completions are cut into blocks of `block` tokens."""
    if block < 1:
        raise ValueError(f"block must be >= 1; got {block}")
    B, T = mask_B_T.shape
    return (torch.arange(T, device=mask_B_T.device) // block).unsqueeze(0).expand(B, T)


def newline_segments_B_T(is_newline_B_T: torch.Tensor) -> torch.Tensor:
    """Segment id of each position when a newline token ends its segment (lines)."""
    nl = is_newline_B_T.long()
    return torch.cumsum(nl, dim=1) - nl


def block_gates_B_T(
    logp_cur_B_T: torch.Tensor,
    logp_behav_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    block: int = 64,
    tau: float = 1.0,
) -> torch.Tensor:
    """The paper's gate: fixed blocks of `block` completion tokens (default 64), tau = 1."""
    drift = token_drift_B_T(logp_cur_B_T, logp_behav_B_T)
    return segment_gates_B_T(drift, mask_B_T, block_segments_B_T(mask_B_T, block), tau)


def newline_gates_B_T(
    logp_cur_B_T: torch.Tensor,
    logp_behav_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    is_newline_B_T: torch.Tensor,
    tau: float = 1.0,
) -> torch.Tensor:
    """Our variant: segments are lines (a step of a chain of thought), not fixed blocks."""
    drift = token_drift_B_T(logp_cur_B_T, logp_behav_B_T)
    return segment_gates_B_T(drift, mask_B_T, newline_segments_B_T(is_newline_B_T), tau)


def newline_token_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokenizer's tokens whose text contains a newline (computed once per run)."""
    ids = []
    for i in range(len(tokenizer)):
        if "\n" in tokenizer.decode([i]):
            ids.append(i)
    return frozenset(ids)


def is_newline_B_T(completion_ids_B_T: torch.Tensor, newline_ids: Iterable[int]) -> torch.Tensor:
    """Boolean (B, T): is each completion token one of `newline_ids`?"""
    ids = torch.tensor(sorted(newline_ids), dtype=completion_ids_B_T.dtype, device=completion_ids_B_T.device)
    return torch.isin(completion_ids_B_T, ids)


def drift_gates_B_T(
    mode: str,
    logp_cur_B_T: torch.Tensor,
    logp_behav_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    *,
    block: int = 64,
    tau: float = 1.0,
    is_newline_B_T: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Dispatch on `--drift-gate`: None for 'off', else the gates of the chosen segmentation."""
    if mode == "off":
        return None
    if mode == "block":
        return block_gates_B_T(logp_cur_B_T, logp_behav_B_T, mask_B_T, block=block, tau=tau)
    if mode == "newline":
        if is_newline_B_T is None:
            raise ValueError("drift gate 'newline' needs is_newline_B_T (see newline_token_ids)")
        return newline_gates_B_T(logp_cur_B_T, logp_behav_B_T, mask_B_T, is_newline_B_T, tau=tau)
    raise ValueError(f"unknown drift gate {mode!r}; use off, block or newline")


@dataclass(frozen=True)
class DriftGate:
    """The learner's view of `--drift-gate`: mode, block size, tau, and the newline token ids."""

    mode: str = "off"
    block: int = 64
    tau: float = 1.0
    newline_ids: frozenset[int] = frozenset()

    @classmethod
    def build(cls, mode: str, tokenizer=None, *, block: int = 64, tau: float = 1.0) -> "DriftGate":
        ids = newline_token_ids(tokenizer) if mode == "newline" else frozenset()
        if mode == "newline" and not ids:
            raise ValueError("drift gate 'newline': the tokenizer has no token containing a newline")
        return cls(mode, block, tau, ids)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def gates_B_T(self, logp_cur_B_T, logp_behav_B_T, mask_B_T, completion_ids_B_T) -> torch.Tensor | None:
        nl = is_newline_B_T(completion_ids_B_T, self.newline_ids) if self.mode == "newline" else None
        return drift_gates_B_T(self.mode, logp_cur_B_T, logp_behav_B_T, mask_B_T, block=self.block, tau=self.tau,
                               is_newline_B_T=nl)
