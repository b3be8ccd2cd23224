"""The one place that knows the order of an OmniOPD step (DESIGN §1).

rollouts -> scheduler (fork points) -> teacher continuations (N per chunk, concurrently) ->
similarity phi -> Dirichlet-smoothed chunk weights pihat -> per-token advantages for the
learner. The learner calls `Pipeline.audit(rollouts, step)`; everything here is synchronous
to the caller and drives the async teacher on one event loop owned by the pipeline, so API
clients created for the run stay bound to one loop for its whole life.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from omniopd.errors import (BudgetExceededError, CacheMissError, ReplayError, TeacherResponseError,
                            TeacherUnavailableError)
from omniopd.rollouts import Rollouts
from omniopd.scoring import k_F, pibar_F, pihat_F, trim_to_chars
from omniopd.similarity import PhiFn
from providers.base import Teacher, TeacherRequest, TeacherSample
from providers.local import messages_from_chat
from scheduler import ForkScheduler

log = logging.getLogger("omniopd")

# Failures that cost one chunk its samples (N_eff drops) but not the run: the teacher client
# already retried them up to its deadline. Everything else (auth, quota, capability, budget)
# is a configuration problem and stops the step.
_PER_CHUNK_FAILURES = (TeacherUnavailableError, TeacherResponseError)


class EpisodeRecorder(Protocol):
    """Receives each step's episode (cache/ implements it for offline replay)."""

    def record_step(self, step: int, episode: dict[str, Any]) -> None: ...


@dataclass
class ChunkAudit:
    """One audited chunk: where it is, what the student wrote, what the teacher wrote, its weight."""

    row: int
    start: int
    length: int
    student_text: str
    teacher_texts: list[str]
    phi: list[float]
    pibar: float = 0.0
    pihat: float = 0.0
    samples: list[TeacherSample] = field(default_factory=list)
    failed: bool = False


@dataclass
class AuditResult:
    """The learner's input: advantages (B, T) = pihat on audited tokens, 0 elsewhere."""

    advantages_B_T: torch.Tensor
    audit_mask_B_T: torch.Tensor
    chunks: list[ChunkAudit]
    starts: list[list[int]]
    metrics: dict[str, float]


def advantages_B_T(shape: tuple[int, int], chunks: list[ChunkAudit], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter chunk weights onto their tokens: (advantages, audited-token mask)."""
    adv = torch.zeros(shape, dtype=torch.float32, device=device)
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    for c in chunks:
        adv[c.row, c.start:c.start + c.length] = c.pihat
        mask[c.row, c.start:c.start + c.length] = True
    return adv, mask


class Pipeline:
    """Audits a batch of rollouts: see the module docstring."""

    def __init__(self, teacher: Teacher, tokenizer, scheduler: ForkScheduler, phi: PhiFn, *, samples: int = 10,
                 alpha: float = 1.0, trim_slack: float = 0.2, token_factor: float = 1.3,
                 teacher_temperature: float | None = None, max_usd: float | None = None,
                 recorder: EpisodeRecorder | None = None, progress: bool = False, skip_missing: bool = False):
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.phi = phi
        self.samples = samples
        self.alpha = alpha
        self.trim_slack = trim_slack
        self.teacher_max_tokens = math.ceil(token_factor * scheduler.chunk_tokens)
        self.teacher_temperature = teacher_temperature
        self.max_usd = max_usd
        self.recorder = recorder
        self.progress = progress
        # replay: a fork whose samples were never recorded (CacheMissError) is dropped from the
        # step (skip_missing) or stops the run (--strict-replay)
        self.skip_missing = skip_missing
        self.replay_missed_forks = 0
        self.spent_usd = 0.0
        self.teacher_samples_total = 0
        self._loop = asyncio.new_event_loop()

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.run_until_complete(self.teacher.aclose())
        self._loop.close()

    # -- the step ---------------------------------------------------------------------------
    def audit(self, rollouts: Rollouts, step: int) -> AuditResult:
        t0 = time.perf_counter()
        lengths = rollouts.lengths
        starts = self.scheduler.select(rollouts.entropy_B_T, lengths)
        C = self.scheduler.chunk_tokens
        chunks: list[ChunkAudit] = []
        requests: list[TeacherRequest] = []
        comp = rollouts.completion_ids.tolist()
        for b, ss in enumerate(starts):
            for s in ss:
                prefix = self.tokenizer.decode(comp[b][:s], skip_special_tokens=True)
                chunk_text = self.tokenizer.decode(comp[b][s:s + C], skip_special_tokens=True)
                chunks.append(ChunkAudit(row=b, start=s, length=C, student_text=chunk_text, teacher_texts=[], phi=[]))
                requests.append(TeacherRequest(
                    messages=messages_from_chat(rollouts.prompts[b]), prefix=prefix, n=self.samples,
                    max_tokens=self.teacher_max_tokens, temperature=self.teacher_temperature,
                ))
        t1 = time.perf_counter()

        if requests and self.max_usd is not None and self.spent_usd >= self.max_usd:
            raise BudgetExceededError(
                f"teacher spend ${self.spent_usd:.4f} reached --max-teacher-usd {self.max_usd}; "
                "the run stopped cleanly — raise the limit and rerun with --resume to continue"
            )
        results = self._loop.run_until_complete(self._sample_all(requests))
        chunks, results, starts = self._drop_missed(chunks, results, starts)
        step_cost = 0.0
        for c, res in zip(chunks, results):
            if isinstance(res, BaseException):
                c.failed = True
                log.warning("teacher failed on a chunk (row %d, start %d): %s", c.row, c.start, res)
                continue
            c.samples = res
            c.teacher_texts = [trim_to_chars(s.text, len(c.student_text), self.trim_slack) for s in res]
            step_cost += sum(s.cost_usd for s in res if not s.extra.get("cached"))
        self.spent_usd += step_cost
        t2 = time.perf_counter()

        phi_rows = self.phi([c.student_text for c in chunks], [c.teacher_texts for c in chunks]) if chunks else []
        for c, row in zip(chunks, phi_rows):
            c.phi = [float(x) for x in row]
        if chunks:
            k, n_eff = k_F([c.phi for c in chunks])
            lp = rollouts.logprobs_B_T.detach().float().cpu()
            sums = torch.tensor([float(lp[c.row, c.start:c.start + c.length].sum()) for c in chunks], dtype=torch.float64)
            lens = torch.tensor([float(c.length) for c in chunks], dtype=torch.float64)
            pibar = pibar_F(sums, lens)
            pihat = pihat_F(k, n_eff, pibar, self.alpha)
            for c, pb, ph in zip(chunks, pibar.tolist(), pihat.tolist()):
                c.pibar, c.pihat = pb, ph
        adv, amask = advantages_B_T(tuple(rollouts.completion_ids.shape), chunks, rollouts.completion_ids.device)
        t3 = time.perf_counter()

        n_samples = sum(len(c.samples) for c in chunks)
        self.teacher_samples_total += n_samples
        metrics = _step_metrics(chunks, rollouts, amask, n_samples, step_cost, self.spent_usd)
        metrics.update(scheduler_seconds=t1 - t0, teacher_seconds=t2 - t1, scorer_seconds=t3 - t2)
        metrics["replay_missed_forks"] = float(self.replay_missed_forks)
        if self.recorder is not None:
            self.recorder.record_step(step, episode_dict(rollouts, starts, chunks))
        return AuditResult(adv, amask, chunks, starts, metrics)

    def _drop_missed(self, chunks: list[ChunkAudit], results: list, starts: list[list[int]]):
        """Replay: forks whose teacher samples were not recorded leave the step (counted, logged)."""
        missed = [c for c, r in zip(chunks, results) if isinstance(r, CacheMissError)]
        if not missed:
            return chunks, results, starts
        self.replay_missed_forks += len(missed)
        log.warning("replay: %d forks had no recorded teacher samples and were skipped (%d so far)",
                    len(missed), self.replay_missed_forks)
        gone = {(c.row, c.start) for c in missed}
        kept = [(c, r) for c, r in zip(chunks, results) if not isinstance(r, CacheMissError)]
        starts = [[s for s in ss if (b, s) not in gone] for b, ss in enumerate(starts)]
        return [c for c, _ in kept], [r for _, r in kept], starts

    async def _sample_all(self, requests: list[TeacherRequest]) -> list[list[TeacherSample] | BaseException]:
        bar = tqdm(total=len(requests), desc="teacher", unit="chunk", leave=False, disable=not self.progress or not requests)

        async def one(req: TeacherRequest):
            try:
                return await self.teacher.sample(req)
            except _PER_CHUNK_FAILURES as exc:
                return exc
            except CacheMissError as exc:
                if self.skip_missing:
                    return exc
                raise ReplayError(f"--strict-replay: {exc}. Drop --strict-replay to skip such forks, or replay with "
                                  "the scheduler and teacher settings of the recorded run") from exc
            finally:
                bar.update(1)

        try:
            results = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
        finally:
            bar.close()
        for r in results:  # configuration-level failures (auth, quota, budget, bugs) stop the step
            if isinstance(r, BaseException) and not isinstance(r, (*_PER_CHUNK_FAILURES, CacheMissError)):
                raise r
        return results


def _step_metrics(chunks: list[ChunkAudit], rollouts: Rollouts, amask: torch.Tensor, n_samples: int,
                  step_cost: float, spent: float) -> dict[str, float]:
    valid = rollouts.completion_mask.bool()
    pihat = [c.pihat for c in chunks]
    kn = [sum(c.phi) / len(c.phi) for c in chunks if c.phi]
    return {
        "forks": float(len(chunks)),
        "teacher_samples": float(n_samples),
        "teacher_failed_chunks": float(sum(c.failed for c in chunks)),
        "teacher_exact_share": (sum(s.exact for c in chunks for s in c.samples) / n_samples) if n_samples else 1.0,
        "teacher_cost_usd": step_cost,
        "teacher_cost_usd_total": spent,
        "pihat_mean": sum(pihat) / len(pihat) if pihat else 0.0,
        "pihat_min": min(pihat) if pihat else 0.0,
        "pihat_max": max(pihat) if pihat else 0.0,
        "k_over_n_mean": sum(kn) / len(kn) if kn else 0.0,
        "pibar_mean": sum(c.pibar for c in chunks) / len(chunks) if chunks else 0.0,
        "audited_tokens": float((amask & valid).sum()),
        "unaudited_tokens": float((~amask & valid).sum()),
        "completion_length_mean": float(valid.sum(-1).float().mean()),
    }


def episode_dict(rollouts: Rollouts, starts: list[list[int]], chunks: list[ChunkAudit]) -> dict[str, Any]:
    """Everything needed to replay a step offline (plain lists, JSON-friendly)."""
    lengths = rollouts.lengths
    pm = rollouts.prompt_mask.bool()
    return {
        "prompts": rollouts.prompts,
        "prompt_ids": [ids[m].tolist() for ids, m in zip(rollouts.prompt_ids, pm)],
        "completion_ids": [ids[:n].tolist() for ids, n in zip(rollouts.completion_ids, lengths)],
        "behaviour_logprobs": [lp[:n].tolist() for lp, n in zip(rollouts.logprobs_B_T, lengths)],
        "entropies": [h[:n].tolist() for h, n in zip(rollouts.entropy_B_T, lengths)],
        "fork_starts": starts,
        "chunks": [
            {
                "row": c.row, "start": c.start, "length": c.length, "student_text": c.student_text,
                "sample_ids": [s.extra.get("cache_id") for s in c.samples],
                "teachers": [s.teacher for s in c.samples],
                "phi": c.phi, "k": sum(c.phi), "n_eff": len(c.phi), "pibar": c.pibar, "pihat": c.pihat,
                # each sample was cut to a prefix of this many characters before phi (what phi saw)
                "compared_chars": [len(t) for t in c.teacher_texts],
            }
            for c in chunks
        ],
    }
