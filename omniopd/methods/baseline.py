"""A baseline for OmniOPD's chunk weights (issue 9): pi_hat minus what the prompt's chunks get on average.

The paper's chunk term, -pi_hat * log pi_theta(own chunk), is REINFORCE with a reward in
[0, 1] and no baseline: every audited chunk is pushed *up*, the ones the teacher disagrees
with only less. With a baseline b the advantage is pi_hat - b, so chunks scored below the
prompt's average are pushed *down*. Groups are the G completions of one prompt (rows
b // G, as TRL lays out its batch).

    none:  A_c = pi_hat_c                                         (the paper)
    group: A_c = pi_hat_c - mean{pi_hat_d : d audited in c's prompt group}       (c included)
    loo:   A_c = pi_hat_c - mean{pi_hat_d : d in c's group, d from another completion}

Leave-one-out leaves out the chunk's whole completion (its own chunks are not independent
of it). A chunk with no peers (the prompt's other completions had no audited chunk) gets
A = 0 under loo: with nothing to compare with, it carries no signal. Under group a lone
chunk is its own mean and also gets 0.
"""

from __future__ import annotations

import torch

BASELINES = ("none", "group", "loo")


def _group_sums(values_F: torch.Tensor, index_F: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of values, count) per index in [0, n)."""
    sums = torch.zeros(n, dtype=values_F.dtype).index_add_(0, index_F, values_F)
    counts = torch.zeros(n, dtype=values_F.dtype).index_add_(0, index_F, torch.ones_like(values_F))
    return sums, counts


def baselined_pihat_F(pihat_F: torch.Tensor, row_F: torch.Tensor, group_size: int, mode: str) -> torch.Tensor:
    """Chunk advantages A_c from chunk weights pi_hat (F,) and each chunk's batch row (F,); see the module doc."""
    if mode not in BASELINES:
        raise ValueError(f"unknown pi_hat baseline {mode!r}; one of {', '.join(BASELINES)}")
    w = pihat_F.double()
    if mode == "none" or w.numel() == 0:
        return w.clone()
    row = row_F.long()
    group = row // group_size
    g_sum, g_cnt = _group_sums(w, group, int(group.max()) + 1)
    if mode == "group":
        return w - g_sum[group] / g_cnt[group]
    r_sum, r_cnt = _group_sums(w, row, int(row.max()) + 1)
    peer_sum, peer_cnt = g_sum[group] - r_sum[row], g_cnt[group] - r_cnt[row]
    has_peers = peer_cnt > 0
    return torch.where(has_peers, w - peer_sum / peer_cnt.clamp(min=1), torch.zeros_like(w))
