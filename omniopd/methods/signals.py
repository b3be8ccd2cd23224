"""Per-method training signals: rollouts in, per-token advantages (and extras) out.

The learner calls `MethodSignals.score(...)` once per generation batch instead of running the
OmniOPD audit itself, and `extra_loss_B_T(...)` inside its loss. One class, one branch per
method, all math delegated to the pure modules next to this one:

| method  | teacher access     | advantages A_t                                 | extras                          |
| ------- | ------------------ | ---------------------------------------------- | ------------------------------- |
| omniopd | text (any teacher) | pihat on audited tokens (x verifier gate),     | KL anchor on unaudited tokens;  |
|         |                    | minus a baseline (--pihat-baseline)            | fork-imitation and draft rows   |
|         |                    |                                                | (methods/blackbox.py)           |
| opd     | white-box          | log pi_T - log pi_old                          | -                               |
| sg-opd  | white-box + verif. | lambda_t * (log pi_T - log pi_old); 1 on       | teacher rows in the cold start  |
|         |                    | verified teacher rows                          |                                 |
| tropd   | white-box (top-k)  | trusted: log pi_T - log pi_old; prefix: beta   | forward KL on outliers          |

White-box methods train without the reference KL anchor (`audit_mask` covers every completion
token, and the learner runs them with kl_beta = 0).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from omniopd.config import MethodConfig
from omniopd.event_loop import EventLoop, process_loop
from omniopd.methods import opd, sg_opd, tropd
from omniopd.methods.blackbox import BlackBoxSignals, blackbox_enabled
from omniopd.methods.rows import continue_prefixes, text_to_completion, with_rows
from omniopd.methods.verifier import VERIFIERS, Verifier, verdicts_B
from omniopd.methods.verifier_gate import gated_advantages_B_T, verdict_scale_B
from omniopd.rollouts import Rollouts
from omniopd.solutions import buy_solutions
from providers.whitebox import WhiteBoxTeacher

log = logging.getLogger("omniopd")


@dataclass
class ScoredBatch:
    """What the learner puts into TRL's batch: advantages (B, T) and per-row extras."""

    rollouts: Rollouts
    advantages_B_T: torch.Tensor
    audit_mask_B_T: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    student_rows: int | None = None  # rows past this were appended by a signal: not in the loss normaliser


class MethodSignals:
    """See the module docstring. `teacher` (text sampling) is needed by sg-opd and tropd guidance.

    `loop` is the event loop teacher text is sampled on: by default the process's one
    (`omniopd.event_loop.process_loop`).
    """

    def __init__(self, cfg: MethodConfig, tokenizer, *, group_size: int, max_new_tokens: int, total_steps: int,
                 pipeline=None, whitebox: WhiteBoxTeacher | None = None, teacher=None,
                 verifier: Verifier | None = None, temperature: float = 1.0, generator: torch.Generator | None = None,
                 loop: EventLoop | None = None):
        self.cfg = cfg
        self.method = cfg.name
        self.tokenizer = tokenizer
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.total_steps = total_steps
        self.pipeline = pipeline
        self.whitebox = whitebox
        self.teacher = teacher
        self.temperature = temperature
        self.generator = generator
        self.verifier = verifier or VERIFIERS[cfg.verifier]
        self.phase_steps = sg_opd.phase_steps_for(total_steps, cfg.sg_phase_fraction)
        self.loop = loop
        if self.method == "omniopd" and pipeline is None:
            raise ValueError("method omniopd needs the OmniOPD pipeline")
        if self.method != "omniopd" and whitebox is None:
            raise ValueError(f"method {self.method} needs a white-box teacher (providers.whitebox.whitebox_for)")
        if self.method in ("sg-opd", "tropd") and teacher is None:
            raise ValueError(f"method {self.method} samples teacher completions: pass teacher=")
        self.blackbox = None
        if self.method == "omniopd" and blackbox_enabled(cfg):
            self.blackbox = BlackBoxSignals(cfg, tokenizer, group_size=group_size, max_new_tokens=max_new_tokens,
                                            phi=pipeline.phi, trim_slack=pipeline.trim_slack, temperature=temperature)

    @property
    def needs_ids(self) -> bool:
        """Does the loss need the student's log-probabilities at given ids (TrOPD's outlier forward KL)?"""
        return self.method == "tropd" and self.cfg.tropd_outliers == "forward_kl"

    def close(self) -> None:
        """Release the white-box scorer's connections (a vLLM server's); the event loop is the process's."""
        close = getattr(self.whitebox, "close", None)
        if close is not None:
            close()

    # -- the step ---------------------------------------------------------------------------
    needs_rollouts = True  # every method here scores the student's own rollouts

    def score(self, rollouts: Rollouts, golds: Sequence[str | None], step: int, student, *,
              prompts: Sequence[list[dict]] | None = None) -> ScoredBatch:
        """Per-token advantages for `rollouts` (their own prompts; `prompts` is for signals that sample none)."""
        if self.method == "omniopd":
            return self._omniopd(rollouts, golds, step, student)
        if self.method == "opd":
            out = self._opd(rollouts)
        elif self.method == "sg-opd":
            out = self._sg_opd(rollouts, golds, step, student)
        else:
            out = self._tropd(rollouts, step, student)
        # white-box cost: completion tokens the teacher scored (its "output" in budget terms)
        out.metrics["teacher_scored_tokens"] = float(out.rollouts.completion_mask.sum())
        return out

    def start(self, rollouts: Rollouts, golds: Sequence[str | None], step: int, student, *,
              prompts: Sequence[list[dict]] | None = None) -> Callable[..., ScoredBatch]:
        """Begin scoring a batch; the returned callable finishes it (`score` = `start(...)()`).

        OmniOPD's teacher requests go out now and are awaited when the callable runs (the learner's
        `--async-steps` overlap); white-box methods score at once, with the student that sampled.
        """
        if self.method == "omniopd":
            pending = self.pipeline.start(rollouts, step)
            # finished when the learner takes it: `step` is then the optimizer step that trains on it
            return lambda step=None: self._omniopd_scored(self.pipeline.finish(pending, step=step), rollouts, golds, student)
        out = self.score(rollouts, golds, step, student)
        return lambda step=None: out

    def _omniopd(self, rollouts, golds, step, student) -> ScoredBatch:
        return self._omniopd_scored(self.pipeline.audit(rollouts, step=step), rollouts, golds, student)

    def _omniopd_scored(self, audit, rollouts, golds, student) -> ScoredBatch:
        rollouts = audit.rollouts or rollouts
        adv, metrics = audit.advantages_B_T, dict(audit.metrics)
        v = None
        if self.cfg.verifier_gate:
            v = verdicts_B(self.verifier, rollouts.completions, golds)
            metrics.update(_verdict_metrics(v))
        if self.blackbox is not None:  # baseline, drafts, fork imitation (issue 9)
            scale = None if v is None else verdict_scale_B(v, self.cfg.verifier_correct_scale, self.cfg.verifier_wrong_scale)
            if audit.extra:
                raise ValueError("the black-box signals append rows; per-row extras from pipeline stages "
                                 f"({', '.join(audit.extra)}) cannot be extended to them yet")
            bb = self.blackbox.score(audit, rollouts, student, scale)
            metrics.update(bb.metrics)
            return ScoredBatch(bb.rollouts, bb.advantages_B_T, bb.audit_mask_B_T, metrics=metrics, student_rows=bb.student_rows)
        if v is not None:
            adv = gated_advantages_B_T(adv, v.to(adv.device), self.cfg.verifier_correct_scale, self.cfg.verifier_wrong_scale)
        return ScoredBatch(rollouts, adv, audit.audit_mask_B_T, extra=dict(audit.extra), metrics=metrics)

    def _teacher_scores(self, rollouts: Rollouts, top_k: int = 0):
        return self.whitebox.token_logprobs(rollouts.prompt_ids, rollouts.prompt_mask, rollouts.completion_ids,
                                            rollouts.completion_mask, top_k=top_k)

    def _opd(self, rollouts) -> ScoredBatch:
        mask = rollouts.completion_mask
        t = self._teacher_scores(rollouts)
        adv = opd.opd_advantages_B_T(t.logp_B_T, rollouts.logprobs_B_T, mask)
        return ScoredBatch(rollouts, adv, mask.bool(), metrics=_signal_metrics(adv, mask))

    def _sg_opd(self, rollouts, golds, step, student) -> ScoredBatch:
        G = self.group_size
        rho = sg_opd.phased_ratio(step, self.phase_steps, self.cfg.sg_rho0)
        slots = sg_opd.teacher_slots(rho, G)
        is_teacher = torch.zeros(len(rollouts.completions), dtype=torch.bool)
        n_offered = 0
        if slots > 0:
            new_rows, n_offered = self._verified_teacher_rows(rollouts, golds, slots)
            rollouts = with_rows(rollouts, new_rows, self.tokenizer, student)
            is_teacher[list(new_rows)] = True
        mask = rollouts.completion_mask
        v = verdicts_B(self.verifier, rollouts.completions, golds)
        direction = sg_opd.verifier_direction_B(v, G, include_B=~is_teacher)
        t = self._teacher_scores(rollouts)
        d = opd.teacher_signal_B_T(t.logp_B_T, rollouts.logprobs_B_T, mask)
        gate = sg_opd.sign_gate_B_T(d, direction.to(d.device), self.cfg.sg_agree, self.cfg.sg_disagree)
        student_rows = (~is_teacher).to(d.device).float().unsqueeze(1)
        adv = gate * d * student_rows + sg_opd.imitation_advantages_B_T(mask, is_teacher.to(d.device))
        metrics = _signal_metrics(d * student_rows, mask * student_rows)
        metrics.update(_verdict_metrics(v[~is_teacher]))
        gated = (direction != 0).to(d.device).unsqueeze(1) & mask.bool() & (d != 0)
        metrics.update({
            "sg_rho": rho, "sg_teacher_rows": float(is_teacher.sum()), "sg_teacher_offered": float(n_offered),
            "sg_agree_share": float((gate[gated] == self.cfg.sg_agree).float().mean()) if gated.any() else 0.0,
        })
        return ScoredBatch(rollouts, adv, mask.bool(), extra={"sg_teacher_row": is_teacher.to(d.device)}, metrics=metrics)

    def _verified_teacher_rows(self, rollouts, golds, slots: int) -> tuple[dict[int, list[int]], int]:
        """Up to `slots` verifier-passed teacher completions per prompt, placed in its last rows."""
        G = self.group_size
        firsts = list(range(0, len(rollouts.prompts), G))
        samples = self._sample_teacher([rollouts.prompts[b] for b in firsts], n=2 * slots)
        new_rows: dict[int, list[int]] = {}
        offered = 0
        for b0, group_samples in zip(firsts, samples):
            offered += len(group_samples)
            ok = [s for s in group_samples if self.verifier(s.text, golds[b0])]
            for j, s in enumerate(ok[:slots]):
                new_rows[b0 + G - 1 - j] = text_to_completion(self.tokenizer, s.text, s.finish_reason == "stop",
                                                              self.max_new_tokens)
        return new_rows, offered

    def _tropd(self, rollouts, step, student) -> ScoredBatch:
        G = self.group_size
        share = tropd.guidance_share(step, self.total_steps, self.cfg.tropd_guidance_share)
        beta = tropd.guidance_weight(step, self.total_steps, self.cfg.tropd_guidance_weight)
        prefix_len: dict[int, int] = {}
        if share > 0:
            lasts = list(range(G - 1, len(rollouts.prompts), G))
            samples = self._sample_teacher([rollouts.prompts[b] for b in lasts], n=1)
            prefixes = {}
            for b, ss in zip(lasts, samples):
                if not ss:
                    continue
                ids = text_to_completion(self.tokenizer, ss[0].text, ss[0].finish_reason == "stop", self.max_new_tokens)
                k = tropd.guidance_prefix_len(len(ids), share)
                if k > 0:
                    prefixes[b] = ids[:k]
                    prefix_len[b] = k
            if prefixes:
                rows = continue_prefixes(student, self.tokenizer, rollouts, prefixes, self.max_new_tokens, self.temperature)
                rollouts = with_rows(rollouts, rows, self.tokenizer, student)
        mask = rollouts.completion_mask
        prefix_B_T = torch.zeros_like(mask, dtype=torch.float32)
        for b, k in prefix_len.items():
            prefix_B_T[b, :k] = 1.0
        prefix_B_T = prefix_B_T * mask
        on_policy = mask.float() * (1.0 - prefix_B_T)
        top_k = self.cfg.tropd_top_k if self.cfg.tropd_outliers == "forward_kl" else 0
        t = self._teacher_scores(rollouts, top_k=top_k)
        p = tropd.trust_B_T(t.logp_B_T, rollouts.logprobs_B_T)
        gen = self.generator
        if gen is not None and gen.device != p.device:
            p_cpu = p.cpu()
            trusted = tropd.trust_membership_B_T(p_cpu, self.cfg.tropd_membership, self.cfg.tropd_threshold, gen).to(p.device)
        else:
            trusted = tropd.trust_membership_B_T(p, self.cfg.tropd_membership, self.cfg.tropd_threshold, gen)
        adv, fkl_mask = tropd.tropd_advantages_B_T(t.logp_B_T, rollouts.logprobs_B_T, on_policy, trusted,
                                                   self.cfg.tropd_outliers, self.cfg.tropd_clip)
        adv = adv + beta * prefix_B_T
        extra = {"tropd_fkl_mask": fkl_mask, "tropd_prefix_mask": prefix_B_T}
        if top_k:
            extra["teacher_topk_logps"] = t.topk_logp_B_T_K
            extra["teacher_topk_ids"] = t.topk_ids_B_T_K
        valid = on_policy.bool()
        metrics = _signal_metrics(opd.teacher_signal_B_T(t.logp_B_T, rollouts.logprobs_B_T, on_policy), on_policy)
        metrics.update({
            "tropd_trust_mean": float(p[valid].mean()) if valid.any() else 0.0,
            "tropd_outlier_share": float((~trusted[valid]).float().mean()) if valid.any() else 0.0,
            "tropd_guidance_share": share, "tropd_guidance_weight": beta,
            "tropd_guided_rows": float(len(prefix_len)), "tropd_prefix_tokens": float(prefix_B_T.sum()),
        })
        return ScoredBatch(rollouts, adv, mask.bool(), extra=extra, metrics=metrics)

    # -- loss extras ----------------------------------------------------------------------------
    def head_ids_B_T_K(self, inputs: dict) -> torch.Tensor | None:
        """Vocabulary ids per token whose student log-probabilities the loss needs (TrOPD: teacher top-k)."""
        if not self.needs_ids or "teacher_topk_ids" not in inputs:
            return None
        return inputs["teacher_topk_ids"]

    def extra_loss_B_T(self, ids_logp_B_T_K: torch.Tensor | None, inputs: dict) -> torch.Tensor | None:
        """Per-token loss added to the policy term (TrOPD: forward KL on outlier tokens), or None.

        `ids_logp_B_T_K`: the student's full-vocabulary log-probabilities at `head_ids_B_T_K(inputs)`.
        """
        if ids_logp_B_T_K is None:
            return None
        return tropd.forward_kl_topk_B_T(ids_logp_B_T_K, inputs["teacher_topk_logps"]) * inputs["tropd_fkl_mask"]

    # -- teacher text --------------------------------------------------------------------------
    def _sample_teacher(self, prompts: list[list[dict]], n: int) -> list[list]:
        """n teacher completions per prompt (text); a failed prompt yields an empty list."""
        if self.loop is None:
            self.loop = process_loop()
        return self.loop.run(buy_solutions(self.teacher, prompts, n=n, max_tokens=self.max_new_tokens))


def _signal_metrics(d_B_T: torch.Tensor, mask_B_T: torch.Tensor) -> dict[str, float]:
    m = mask_B_T.bool()
    if not m.any():
        return {"teacher_signal_mean": 0.0}
    # -mean(log pi_T - log pi_old) over the student's own tokens estimates the reverse KL
    return {"teacher_signal_mean": float(d_B_T[m].mean()), "reverse_kl_estimate": float(-d_B_T[m].mean())}


def _verdict_metrics(v: torch.Tensor) -> dict[str, float]:
    judged = ~torch.isnan(v)
    return {
        "verifier_judged": float(judged.sum()),
        "verifier_correct_share": float(v[judged].mean()) if judged.any() else 0.0,
    }
