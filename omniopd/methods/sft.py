"""`--method sft`: buy whole teacher solutions and train on them (sequence-level KD), optionally
paying only where the student fails and pushing down the student's own wrong answers.

The recipe every black-box method has to beat per teacher dollar (bench/lab/RESULTS.md). Per step,
for the step's P prompts (TRL hands each prompt G times):

- plain (`--sft-only-failures` off, `--sft-negatives 0`): no student rollouts at all; the teacher
  writes `--teacher-solutions` answers per prompt (`omniopd.solutions`, so `omniopd collect`
  and a resumed run find them in the cache) and the student is trained on them with
  cross-entropy: advantage 1 on every token, no KL anchor;
- `--sft-only-failures`: the student's G rollouts are verified first (`--answer-field`); a prompt
  with a verified-correct rollout costs nothing — its correct rollouts are the targets (rejection
  sampling) — and only the others are sent to the teacher;
- `--sft-negatives w`: the student's verifier-wrong rollouts join the batch with advantage -w on
  every token (the teacher's answer keeps its cross-entropy term: negatives alone displace
  likelihood on small models). No extra teacher tokens.
- `--sft-repair` (first-error minimal repair: SCoRe, PERsD, Minimum Change, LEMA): a prompt none
  of whose G rollouts the verifier passes does not buy a whole solution; the teacher is shown one
  of its wrong rollouts and rewrites only the first wrong line onward (`providers/repair.py`). The
  row is the prompt plus the student's own lines before that line as context (not trained), the
  corrected text as the completion (advantage 1). A repair that fails (request or format) buys a
  whole solution for that prompt instead (`sft_repair_failed`).

Every row is a "student row" for the loss normaliser (the batch's tokens), so the positive term is
the mean token cross-entropy of the targets. The episode (prompts, targets, the teacher sample
ids) is recorded, so `--replay` retrains from the recorded solutions with no request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from omniopd.config import MethodConfig
from omniopd.event_loop import EventLoop, process_loop
from omniopd.methods.rows import text_to_completion
from omniopd.methods.signals import ScoredBatch
from omniopd.methods.verifier import Verifier, verdicts_B
from omniopd.repairs import RepairOutcome, buy_repairs
from omniopd.rollouts import Rollouts, pad_rows_B_T, render_messages
from omniopd.solutions import buy_solutions
from providers.base import TeacherSample

log = logging.getLogger("omniopd")


def sft_targets(verdicts_B: torch.Tensor, group_size: int, *, only_failures: bool,
                negatives: bool) -> tuple[list[int], list[int], list[int]]:
    """Which prompts to buy for, which student rows are free targets, which are negatives.

    `verdicts_B`: 1 / 0 per student row (NaN: not judged), rows grouped G per prompt. Returns
    (prompt indices to buy teacher solutions for, student rows kept as positive targets, student
    rows kept as negatives). Without `only_failures` every prompt is bought and no student row is
    a positive; a prompt is "solved" when any of its rows is verified correct.
    """
    P = verdicts_B.numel() // group_size
    buy, positives, negs = [], [], []
    for p in range(P):
        rows = range(p * group_size, (p + 1) * group_size)
        correct = [b for b in rows if float(verdicts_B[b]) == 1.0]
        wrong = [b for b in rows if float(verdicts_B[b]) == 0.0]
        if only_failures and correct:
            positives.extend(correct)
        else:
            buy.append(p)
        if negatives:
            negs.extend(wrong)
    return buy, positives, negs


def repair_rows(verdicts_B: torch.Tensor, group_size: int, buy: Sequence[int],
                completions: Sequence[str]) -> dict[int, int]:
    """Which bought prompts get a first-error repair instead of a whole solution, and of which row.

    A prompt qualifies when none of its G rows is verified correct and one is verified wrong with a
    non-blank answer (there is a first line to repair); its first such row is repaired. Other
    bought prompts (a solved prompt without `--sft-only-failures`, no judged row) buy a whole
    solution as before.
    """
    out: dict[int, int] = {}
    for p in buy:
        rows = range(p * group_size, (p + 1) * group_size)
        if any(float(verdicts_B[b]) == 1.0 for b in rows):
            continue
        wrong = [b for b in rows if float(verdicts_B[b]) == 0.0 and completions[b].strip()]
        if wrong:
            out[p] = wrong[0]
    return out


class SolutionSFT:
    """See the module docstring. Same interface as `MethodSignals` (score / start / loss hooks)."""

    needs_ids = False

    def __init__(self, cfg: MethodConfig, tokenizer, *, teacher, group_size: int, max_new_tokens: int,
                 teacher_temperature: float | None = None, verifier: Verifier | None = None,
                 recorder: Any = None, loop: EventLoop | None = None):
        if (cfg.sft_only_failures or cfg.sft_negatives > 0 or cfg.sft_repair) and verifier is None:
            raise ValueError("--sft-only-failures, --sft-negatives and --sft-repair need a verifier")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.teacher = teacher
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.teacher_temperature = teacher_temperature
        self.verifier = verifier
        self.recorder = recorder
        self.loop = loop
        # the run's teacher side, as the pipeline exposes it (metrics, budget stop, result)
        self.teacher_samples_total = 0
        self.samples_by_teacher: dict[str, int] = {}
        self.spent_usd = 0.0

    @property
    def needs_rollouts(self) -> bool:
        """Does a step sample the student first? Only to verify it (gating), to find negatives, or
        to find the wrong answers a repair starts from."""
        return self.cfg.sft_only_failures or self.cfg.sft_negatives > 0 or self.cfg.sft_repair

    def close(self) -> None:
        return None

    def head_ids_B_T_K(self, inputs: dict) -> None:
        return None

    def extra_loss_B_T(self, ids_logp_B_T_K, inputs: dict) -> None:
        return None

    def start(self, rollouts: Rollouts | None, golds: Sequence[str | None], step: int, student, *,
              prompts: Sequence[list[dict]] | None = None) -> Callable[..., ScoredBatch]:
        out = self.score(rollouts, golds, step, student, prompts=prompts)
        return lambda step=None: out

    def score(self, rollouts: Rollouts | None, golds: Sequence[str | None], step: int, student, *,
              prompts: Sequence[list[dict]] | None = None) -> ScoredBatch:
        """The step's rows: bought teacher solutions or first-error repairs (+ free correct rollouts,
        + negatives). Metrics with `--sft-repair`: `sft_repairs` (repaired rows trained),
        `sft_repair_failed` (repairs that fell back to a whole solution), `sft_repair_tokens` (the
        teacher output tokens the repairs cost, failed ones included)."""
        G = self.group_size
        if rollouts is not None:
            prompts = rollouts.prompts
        if prompts is None:
            raise ValueError("SolutionSFT.score needs the step's prompts (or rollouts)")
        groups = [prompts[i] for i in range(0, len(prompts), G)]
        metrics: dict[str, float] = {}
        to_repair: dict[int, int] = {}  # prompt -> the wrong student row whose first error is repaired
        if rollouts is not None:
            v = verdicts_B(self.verifier, rollouts.completions, golds)
            buy, positives, negatives = sft_targets(v, G, only_failures=self.cfg.sft_only_failures,
                                                    negatives=self.cfg.sft_negatives > 0)
            judged = ~torch.isnan(v)
            metrics["verifier_correct_share"] = float(v[judged].mean()) if judged.any() else 0.0
            if self.cfg.sft_repair:
                to_repair = repair_rows(v, G, buy, rollouts.completions)
        else:
            buy, positives, negatives = list(range(len(groups))), [], []
        # (prompt, context ids after the prompt, completion ids, advantage)
        rows: list[tuple[list[dict], list[int], list[int], float]] = []
        sample_ids: list[str | None] = []
        repaired = self._repair(rollouts, groups, to_repair)
        repair_samples = [o.sample for o in repaired.values() if o.sample is not None]
        for p, outcome in repaired.items():
            if outcome.repair is None:
                continue
            r = outcome.repair
            ctx = self.tokenizer.encode(r.prefix_text, add_special_tokens=False) if r.prefix_text else []
            finished = outcome.sample.finish_reason == "stop"
            # bounded like any teacher solution; the context is prompt, not counted against the answer
            ids = text_to_completion(self.tokenizer, r.corrected_text, finished, self.max_new_tokens)
            if ids:
                rows.append((groups[p], ctx, ids, 1.0))
                sample_ids.append(outcome.sample.cache_id)
        whole = [p for p in buy if p not in repaired or repaired[p].repair is None]
        bought = self._buy([groups[p] for p in whole])
        for p, samples in zip(whole, bought):
            for s in samples:
                ids = text_to_completion(self.tokenizer, s.text, s.finish_reason == "stop", self.max_new_tokens)
                if ids:
                    rows.append((groups[p], [], ids, 1.0))
                    sample_ids.append(s.cache_id)
        for b in positives:
            rows.append((rollouts.prompts[b], [], _row_ids(rollouts, b), 1.0))
        for b in negatives:
            rows.append((rollouts.prompts[b], [], _row_ids(rollouts, b), -self.cfg.sft_negatives))
        paid = bought + [repair_samples]  # every sample bought counts, a failed repair's too
        n_samples = sum(len(s) for s in paid)
        if self.cfg.sft_repair:
            metrics.update({"sft_repairs": float(sum(o.repair is not None for o in repaired.values())),
                            "sft_repair_failed": float(sum(o.repair is None for o in repaired.values())),
                            "sft_repair_tokens": float(sum(s.output_tokens for s in repair_samples))})
        metrics.update({"teacher_samples": float(n_samples), "sft_prompts_bought": float(len(whole)),
                        "sft_prompts": float(len(groups)), "sft_free_targets": float(len(positives)),
                        "sft_negatives": float(len(negatives)), "sft_teacher_rows": float(len(sample_ids)),
                        "teacher_cost_usd": float(sum(s.cost_usd for ss in paid for s in ss if not s.cached))})
        self.teacher_samples_total += n_samples
        self.spent_usd += metrics["teacher_cost_usd"]
        for ss in paid:
            for s in ss:
                self.samples_by_teacher[s.teacher] = self.samples_by_teacher.get(s.teacher, 0) + 1
        if not rows:  # nothing to learn from this step (every request failed): one empty row keeps TRL's shapes
            log.warning("step %d: no SFT target (teacher requests failed and no free target)", step)
        batch = self._batch(rows)
        if self.recorder is not None:
            self.recorder.record_step(step, {"prompts": [r[0] for r in rows], "advantages": [r[3] for r in rows],
                                             "contexts": [r[1] for r in rows], "completion_ids": [r[2] for r in rows],
                                             "solutions": [{"sample_ids": [i for i in sample_ids if i]}]})
        batch.metrics.update(metrics)
        return batch

    def _buy(self, prompts: list[list[dict]]) -> list[list[TeacherSample]]:
        if not prompts:
            return []
        if self.loop is None:
            self.loop = process_loop()
        return self.loop.run(buy_solutions(self.teacher, prompts, n=self.cfg.teacher_solutions,
                                           max_tokens=self.max_new_tokens, temperature=self.teacher_temperature))

    def _repair(self, rollouts: Rollouts | None, groups: list[list[dict]],
                to_repair: dict[int, int]) -> dict[int, RepairOutcome]:
        """prompt -> the outcome of repairing its chosen wrong rollout (empty without repairs)."""
        if not to_repair:
            return {}
        if self.loop is None:
            self.loop = process_loop()
        items = [(groups[p], rollouts.completions[b]) for p, b in to_repair.items()]
        outcomes = self.loop.run(buy_repairs(self.teacher, items, max_tokens=self.max_new_tokens,
                                             temperature=self.teacher_temperature))
        return dict(zip(to_repair, outcomes))

    def _batch(self, rows: list[tuple[list[dict], list[int], list[int], float]]) -> ScoredBatch:
        """Rows as the learner's batch: each prompt rendered, then its context ids (the student's own
        lines before a repaired step; empty otherwise) as more prompt, the completion after them."""
        tok = self.tokenizer
        if not rows:
            rows = [([{"role": "user", "content": ""}], [], [], 0.0)]
        texts = render_messages(tok, [r[0] for r in rows])
        prompt_rows = [tok(t, add_special_tokens=False)["input_ids"] + r[1] for t, r in zip(texts, rows)]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        comp = [r[2] for r in rows]
        mask = pad_rows_B_T([[1] * len(c) for c in comp], 0, torch.long)
        rollouts = Rollouts(
            prompt_ids=pad_rows_B_T(prompt_rows, pad, torch.long, left=True),
            prompt_mask=pad_rows_B_T([[1] * len(p) for p in prompt_rows], 0, torch.long, left=True),
            completion_ids=pad_rows_B_T(comp, pad, torch.long, width=mask.size(1)), completion_mask=mask,
            logprobs_B_T=torch.zeros(mask.shape), entropy_B_T=torch.zeros(mask.shape),
            prompts=[r[0] for r in rows], completions=tok.batch_decode(comp, skip_special_tokens=True))
        adv = torch.tensor([r[3] for r in rows]).unsqueeze(1) * mask
        return ScoredBatch(rollouts, adv, mask.bool())


def _row_ids(rollouts: Rollouts, b: int) -> list[int]:
    return rollouts.completion_ids[b, : int(rollouts.completion_mask[b].sum())].tolist()
