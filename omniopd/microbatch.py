"""Micro-batches bounded by tokens: a step's memory follows a budget, not the number of rows.

A step's batch grows with what the signal appends (one teacher row per fork with fork imitation,
K draft rows per fork, ...), so forwarding it as one batch makes peak memory grow with forks x
continuation length. The learner instead splits each batch into micro-batches of at most
`budget` padded tokens (rows x (longest prompt + longest completion) in that micro-batch) and
accumulates gradients. Rows are packed by length (longest first, first fit), so a micro-batch
pads little; columns that are padding in every row of a micro-batch are trimmed.

Exactness: the learner's loss is a sum over tokens divided by one normaliser for the whole
batch (`omniopd.loss`), so the micro-batch losses add up to the one-batch loss and their
gradients to its gradient (up to float summation order). Per-micro-batch statistics are
combined by `combine_stats`: sums add, means are weighted by their token counts.

Pure functions over TRL's batch dict; no trainer, no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

# Keys of TRL's batch dict whose second dimension is the prompt (left-padded); every other
# tensor of shape (B, T_completion, ...) is completion-aligned (right-padded).
PROMPT_KEYS = ("prompt_ids", "prompt_mask")


def row_tokens_B(prompt_mask_B_P: torch.Tensor, completion_mask_B_T: torch.Tensor) -> torch.Tensor:
    """(B,) real tokens of each row: prompt + completion."""
    return prompt_mask_B_P.sum(1) + completion_mask_B_T.sum(1)


def pack_rows(prompt_len_B: Sequence[int], completion_len_B: Sequence[int], budget: int) -> list[list[int]]:
    """Row indices per micro-batch, each padding to at most `budget` tokens where possible.

    A micro-batch of rows R costs |R| * (max prompt length in R + max completion length in R)
    padded tokens. Rows with no completion token are dropped (they contribute nothing to the
    loss). Rows are taken longest first and each goes into the first micro-batch it fits; a row
    longer than the budget alone gets a micro-batch of its own (the budget cannot split a row).
    The result is deterministic and every kept row appears exactly once.
    """
    if budget < 1:
        raise ValueError(f"pack_rows: budget must be >= 1 token; got {budget}")
    if len(prompt_len_B) != len(completion_len_B):
        raise ValueError("pack_rows: prompt and completion lengths must have one entry per row")
    order = sorted((b for b in range(len(completion_len_B)) if completion_len_B[b] > 0),
                   key=lambda b: (-(prompt_len_B[b] + completion_len_B[b]), b))
    bins: list[list[int]] = []
    shape: list[tuple[int, int]] = []  # (max prompt, max completion) of each bin
    for b in order:
        p, c = int(prompt_len_B[b]), int(completion_len_B[b])
        for i, (mp, mc) in enumerate(shape):
            np_, nc = max(mp, p), max(mc, c)
            if (len(bins[i]) + 1) * (np_ + nc) <= budget:
                bins[i].append(b)
                shape[i] = (np_, nc)
                break
        else:
            bins.append([b])
            shape.append((p, c))
    return [sorted(rows) for rows in bins]


def slice_batch(inputs: Mapping[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The micro-batch of `rows`: every per-row tensor indexed, padding-only columns trimmed.

    Prompt tensors (`PROMPT_KEYS`, left-padded) keep their last P columns, completion-aligned
    tensors (second dimension = the completion width) their first C, where P and C are the
    longest prompt and completion among `rows`. Scalars (e.g. `num_items_in_batch`, the
    whole batch's normaliser) and non-tensors pass through unchanged.
    """
    B = inputs["completion_ids"].size(0)
    T = inputs["completion_ids"].size(1)
    idx = torch.as_tensor(list(rows), dtype=torch.long, device=inputs["completion_ids"].device)
    pm = inputs["prompt_mask"].index_select(0, idx)
    cm = inputs["completion_mask"].index_select(0, idx)
    P = max(1, int(pm.sum(1).max())) if len(rows) else 1
    C = max(1, int(cm.sum(1).max())) if len(rows) else 1
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.size(0) != B:
            out[key] = value
            continue
        v = value.index_select(0, idx)
        if key in PROMPT_KEYS:
            v = v[:, v.size(1) - P:]
        elif v.dim() >= 2 and v.size(1) == T:
            v = v[:, :C]
        out[key] = v
    return out


def microbatches(inputs: Mapping[str, Any], budget: int | None) -> list[dict[str, Any]]:
    """`inputs` split by `pack_rows` (one micro-batch, untouched, when `budget` is None or it fits)."""
    pm, cm = inputs["prompt_mask"], inputs["completion_mask"]
    B = cm.size(0)
    if budget is None or B * (pm.size(1) + cm.size(1)) <= budget:
        return [dict(inputs)]
    groups = pack_rows(pm.sum(1).tolist(), cm.sum(1).tolist(), budget)
    if not groups:  # no row has a completion token: one (empty-loss) micro-batch keeps the step's shape
        groups = [[0]]
    return [slice_batch(inputs, rows) for rows in groups]


# How each loss statistic combines over micro-batches: sums add; means are weighted by the
# count they are a mean over; minima and maxima take the min/max.
SUMMED_STATS = ("policy_loss", "chunk_loss", "kl_loss", "extra_loss", "anchored_tokens")


def combine_stats(parts: Sequence[tuple[Mapping[str, torch.Tensor], Mapping[str, float]]]) -> dict[str, torch.Tensor]:
    """One step's stats from the micro-batches' (stats, weights) pairs.

    `weights[name]` is the count a mean statistic is taken over in that micro-batch (tokens);
    names in `SUMMED_STATS` are added; names ending in `_min` / `_max` take the min / max.
    A weighted mean with zero total weight is 0.
    """
    if not parts:
        return {}
    out: dict[str, torch.Tensor] = {}
    for name in parts[0][0]:
        values = [p[0][name].detach().float() for p in parts]
        if name in SUMMED_STATS:
            out[name] = torch.stack(values).sum()
        elif name.endswith("_min"):
            out[name] = torch.stack(values).min()
        elif name.endswith("_max"):
            out[name] = torch.stack(values).max()
        else:
            w = torch.tensor([float(p[1].get(name, 1.0)) for p in parts], dtype=torch.float32)
            v = torch.stack([x.cpu() for x in values])
            out[name] = (v * w).sum() / w.sum() if w.sum() > 0 else v.new_zeros(())
            out[name] = out[name].to(values[0].device)
    return out


def pad_rows_to_multiple(batch: Mapping[str, Any], k: int) -> dict[str, Any]:
    """`batch` with empty rows (every mask 0, every value 0) appended so its row count divides by `k`.

    TRL splits a generation batch into `steps_per_generation` equal slices and drops the
    remainder (`trl.trainer.utils.split_tensor_dict`); a signal that appends rows makes the row
    count arbitrary. Empty rows contribute nothing to the loss or its gradient, so padding keeps
    every real row in exactly one slice for any `k`.
    """
    B = batch["completion_ids"].size(0)
    extra = (-B) % k
    if extra == 0:
        return dict(batch)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == B:
            out[key] = torch.cat([value, value.new_zeros((extra, *value.shape[1:]))])
        else:
            out[key] = value
    # an all-zero prompt mask would make a row with no token at all; give it one masked-in pad token
    out["prompt_mask"][B:, -1] = 1
    return out
