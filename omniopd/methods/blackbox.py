"""OmniOPD's black-box signals beyond the paper (issue 9), wired around one audit.

The pipeline's audit gives, per fork, the student's chunk, the teacher's N_eff samples and
pi_hat. From those this module builds the batch the learner trains on:

- `--pihat-baseline group|loo`: chunk advantages pi_hat - baseline (methods/baseline.py), times
  `--pihat-weight` (0: the chunk term is off and the teacher's text alone teaches);
- `--student-drafts K`: K more student chunks per fork, group-relative advantages
  (methods/drafts.py), as appended rows, plus A_0 on the original chunk;
- `--fork-imitation w`: the teacher's continuations as appended rows (methods/imitation.py).

Every appended row is audited in full (no KL anchor on it) and is left out of the loss
normaliser: the learner divides by the student's own completion tokens, so adding rows does
not dilute the chunk term and the anchor, and a weight means the same with or without them.
With the verifier gate, its per-completion scale multiplies pi_hat before the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from omniopd.config import MethodConfig
from omniopd.methods.baseline import baselined_pihat_F
from omniopd.methods.drafts import draft_rows, group_relative_F_K
from omniopd.methods.imitation import imitation_rows
from omniopd.methods.rows import ExtraRows, append_rows, prompt_ids_rows
from omniopd.pipeline import AuditResult, advantages_B_T
from omniopd.rollouts import Rollouts, pad_rows_B_T


def blackbox_enabled(cfg: MethodConfig) -> bool:
    """Is any of this module's signals on?"""
    return cfg.pihat_baseline != "none" or cfg.fork_imitation > 0 or cfg.student_drafts > 0 or cfg.pihat_weight != 1.0


@dataclass
class BlackBoxBatch:
    rollouts: Rollouts
    advantages_B_T: torch.Tensor
    audit_mask_B_T: torch.Tensor
    student_rows: int
    metrics: dict[str, float]


class BlackBoxSignals:
    """See the module docstring. `phi` and `trim_slack` are the pipeline's (drafts are scored like chunks)."""

    def __init__(self, cfg: MethodConfig, tokenizer, *, group_size: int, max_new_tokens: int, phi, trim_slack: float,
                 temperature: float = 1.0):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.phi = phi
        self.trim_slack = trim_slack
        self.temperature = temperature

    def score(self, audit: AuditResult, rollouts: Rollouts, student, row_scale_B: torch.Tensor | None = None) -> BlackBoxBatch:
        chunks = audit.chunks
        B = rollouts.completion_ids.size(0)
        dev = rollouts.completion_ids.device
        metrics: dict[str, float] = {}
        adv_F = self._chunk_advantages_F(chunks, row_scale_B)
        adv, mask = advantages_B_T(tuple(rollouts.completion_ids.shape),
                                   [replace(c, pihat=float(a)) for c, a in zip(chunks, adv_F.tolist())], dev)
        if chunks:
            metrics["pihat_adv_mean"] = float(adv_F.mean())
            metrics["pihat_adv_neg_share"] = float((adv_F < 0).double().mean())
        lengths = rollouts.lengths
        comp = [rollouts.completion_ids[b, :n].tolist() for b, n in enumerate(lengths)]
        extra = ExtraRows()
        if self.cfg.student_drafts > 0:
            rows, originals, scores = draft_rows(chunks, prompt_ids_rows(rollouts), comp, student, self.tokenizer, self.phi,
                                                 drafts=self.cfg.student_drafts, trim_slack=self.trim_slack,
                                                 temperature=self.temperature)
            for c, a0 in originals:
                adv[c.row, c.start:c.start + c.length] += a0
            _extend(extra, rows)
            metrics.update(draft_rows=float(len(rows)), draft_score_original=_mean(scores[:, :1]),
                           draft_score_drafts=_mean(scores[:, 1:]),
                           draft_adv_abs_mean=_mean(group_relative_F_K(scores).abs()))
        if self.cfg.fork_imitation > 0:
            rows = imitation_rows(chunks, comp, self.tokenizer, self.cfg.fork_imitation, self.max_new_tokens)
            _extend(extra, rows)
            metrics.update(imitation_rows=float(len(rows)),
                           imitation_tokens=float(sum(len(r) for r in rows.completions)))
        if not len(extra):
            return BlackBoxBatch(rollouts, adv, mask, B, metrics)
        out = append_rows(rollouts, extra.source_rows, extra.contexts, extra.completions, self.tokenizer, student)
        T = out.completion_ids.size(1)
        full = out.completion_mask.bool()
        adv_all = pad_rows_B_T([*adv, *([a] * len(r) for a, r in zip(extra.advantages, extra.completions))], 0.0,
                               adv.dtype, device=dev, width=T)
        mask_all = pad_rows_B_T([*mask, *([True] * len(r) for r in extra.completions)], False, torch.bool,
                                device=dev, width=T) & full
        return BlackBoxBatch(out, adv_all, mask_all, B, metrics)

    def _chunk_advantages_F(self, chunks, row_scale_B: torch.Tensor | None) -> torch.Tensor:
        """pi_hat (x the verifier gate's row scale) minus the configured baseline, x `pihat_weight`;
        chunks without teacher samples (N_eff = 0) keep pi_hat = pi_bar under `none` and get 0
        under a baseline."""
        w = torch.tensor([c.pihat for c in chunks], dtype=torch.float64)
        rows = torch.tensor([c.row for c in chunks], dtype=torch.long)
        if row_scale_B is not None and chunks:
            w = w * row_scale_B.double().cpu()[rows]
        if self.cfg.pihat_baseline != "none" and chunks:
            scored = torch.tensor([bool(c.phi) for c in chunks])
            out = torch.zeros_like(w)
            if scored.any():
                out[scored] = baselined_pihat_F(w[scored], rows[scored], self.group_size, self.cfg.pihat_baseline)
            w = out
        return w * self.cfg.pihat_weight


def _extend(into: ExtraRows, rows: ExtraRows) -> None:
    for a, b, c, d in zip(rows.source_rows, rows.contexts, rows.completions, rows.advantages):
        into.add(a, b, c, d)


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else 0.0
