"""The one place that knows the order of an OmniOPD step (DESIGN §1), as small named stages.

    rollouts ─► fork_requests ─► await_samples ─► score_phi ─► estimate_pihat ─► [extra stages] ─► scatter_advantages ─► record_episode
                (caller thread)  (event loop, streamed per completion and per chunk)          (caller thread)

Stage contract. Every stage is a function of one `AuditState` (the step's rollouts, fork
starts, `ChunkAudit`s, and — once scattered — the (B, T) advantages) that fills in the fields
it owns and returns **its own metrics** as a `dict[str, float]` (merged into the step's
metrics, names unprefixed; the learner logs them under `omniopd/`). Stages never call each
other; only `Pipeline.start` / `Pipeline.finish` know the order.

- `fork_requests(state)`: the scheduler's fork starts and, per fork, a `ChunkAudit` (the
  student's chunk text) and a `TeacherRequest` (prefix = prompt + the student's tokens before
  the fork, as text). Runs on the caller's thread (it uses the student tokenizer).
- `await_samples` / `score_phi`: the requests go to the teacher as soon as the forks are
  chosen (all in one loop turn, so an in-process teacher batches them the same way in every
  seeded run); each chunk is scored by phi as soon as its own samples arrive, while the rest
  are still out (on one scorer thread, so the event loop never runs CPU work). A per-chunk teacher failure
  (outage past the client's deadline, bad answer) sets `failed` and leaves N_eff = 0; any other
  error (auth, quota, budget, strict replay) stops the step.
- `drop_replay_misses`: forks whose samples the recorded run never bought leave the step.
- `estimate_pihat`: pibar from the behaviour log-probs, pihat = Dirichlet posterior (scoring.py).
- extra stages (`Pipeline(extra_stages=[...])`): run in order between pihat and scatter, each
  `stage(state) -> metrics`. This is the place for signals that reshape the chunk weights
  (a baseline on pihat: rewrite `c.pihat`), add rows (teacher imitation at forks: replace
  `state.rollouts` and append `ChunkAudit`s for the new rows, or add per-row tensors to
  `state.extra`, which the learner puts into TRL's batch), or add drafts.
- `scatter_advantages(state)`: (B, T) advantages = pihat on each chunk's tokens, 0 elsewhere,
  and the audited-token mask.
- `record_episode`: the step as an episode for offline replay (cache/).

Who owns what: the event loop is the process's one loop (`omniopd.event_loop.process_loop()`),
handed in by the training entry point; spend and the replay-miss policy are teacher wrappers
(`cache/policies.py`), so the pipeline only asks the spend limit whether a step may start.

Overlap: `start(rollouts, step)` sends the step's requests and returns at once; `finish`
waits for them and runs the rest. `audit = finish ∘ start` (what `--async-steps 0` uses);
the learner calls `start` and `finish` apart to let the teacher answer while it generates.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from cache.policies import ReplayMisses, SpendLimit
from omniopd.errors import CacheMissError, TeacherResponseError, TeacherUnavailableError
from omniopd.event_loop import EventLoop, process_loop
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
    missed: bool = False  # replay: the recorded run never bought this fork's samples


@dataclass
class AuditState:
    """One step in flight; each stage fills the fields it owns (module docstring)."""

    rollouts: Rollouts
    step: int
    starts: list[list[int]] = field(default_factory=list)
    chunks: list[ChunkAudit] = field(default_factory=list)
    requests: list[TeacherRequest] = field(default_factory=list)
    advantages_B_T: torch.Tensor | None = None
    audit_mask_B_T: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class AuditResult:
    """The learner's input: advantages (B, T) = pihat on audited tokens, 0 elsewhere."""

    advantages_B_T: torch.Tensor
    audit_mask_B_T: torch.Tensor
    chunks: list[ChunkAudit]
    starts: list[list[int]]
    metrics: dict[str, float]
    rollouts: Rollouts | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


Stage = Callable[[AuditState], dict[str, float]]


@dataclass
class PendingAudit:
    """A started step: its state and the future of its teacher requests (empty: nothing to ask)."""

    state: AuditState
    rows: list[concurrent.futures.Future]
    started: float
    bar: Any = None


def advantages_B_T(shape: tuple[int, int], chunks: list[ChunkAudit], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter chunk weights onto their tokens: (advantages, audited-token mask)."""
    adv = torch.zeros(shape, dtype=torch.float32, device=device)
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    for c in chunks:
        adv[c.row, c.start:c.start + c.length] = c.pihat
        mask[c.row, c.start:c.start + c.length] = True
    return adv, mask


# --- stages (pure over the state; the Pipeline supplies their settings) ---------------------------
def fork_requests(state: AuditState, scheduler: ForkScheduler, tokenizer, *, samples: int, max_tokens: int,
                  temperature: float | None) -> dict[str, float]:
    """Fork starts (one scheduler call: a batch budget spans rows), chunk texts and teacher requests, row by row."""
    t0 = time.perf_counter()
    r = state.rollouts
    state.starts = scheduler.select(r.entropy_B_T, r.lengths)
    C = scheduler.chunk_tokens
    comp = r.completion_ids.tolist()
    for b, ss in enumerate(state.starts):
        for s in ss:
            prefix = tokenizer.decode(comp[b][:s], skip_special_tokens=True)
            chunk_text = tokenizer.decode(comp[b][s:s + C], skip_special_tokens=True)
            state.chunks.append(ChunkAudit(row=b, start=s, length=C, student_text=chunk_text, teacher_texts=[], phi=[]))
            state.requests.append(TeacherRequest(messages=messages_from_chat(r.prompts[b]), prefix=prefix, n=samples,
                                                 max_tokens=max_tokens, temperature=temperature))
    return {"forks_requested": float(len(state.chunks)), "scheduler_seconds": time.perf_counter() - t0}


async def await_samples(teacher: Teacher, chunk: ChunkAudit, request: TeacherRequest, trim_slack: float) -> None:
    """One fork's teacher samples onto its chunk (trimmed to the student chunk's length)."""
    try:
        res = await teacher.sample(request)
    except _PER_CHUNK_FAILURES as exc:
        chunk.failed = True
        log.warning("teacher failed on a chunk (row %d, start %d): %s", chunk.row, chunk.start, exc)
        return
    except CacheMissError:
        chunk.missed = True
        return
    chunk.samples = res
    chunk.teacher_texts = [trim_to_chars(s.text, len(chunk.student_text), trim_slack) for s in res]


def score_phi(phi: PhiFn, chunk: ChunkAudit) -> float:
    """phi(student chunk, each teacher sample); returns the seconds it took."""
    t0 = time.perf_counter()
    chunk.phi = [float(x) for x in phi([chunk.student_text], [chunk.teacher_texts])[0]] if chunk.teacher_texts else []
    return time.perf_counter() - t0


def drop_replay_misses(state: AuditState, missed_so_far: int = 0) -> dict[str, float]:
    """Replay: forks whose teacher samples were not recorded leave the step (the policy counted them)."""
    gone = {(c.row, c.start) for c in state.chunks if c.missed}
    if gone:
        log.warning("replay: %d forks had no recorded teacher samples and were skipped (%d so far)",
                    len(gone), missed_so_far)
        state.chunks = [c for c in state.chunks if not c.missed]
        state.starts = [[s for s in ss if (b, s) not in gone] for b, ss in enumerate(state.starts)]
    return {"replay_missed_forks_step": float(len(gone))}


def estimate_pihat(state: AuditState, alpha: float) -> dict[str, float]:
    """pibar (the student's confidence in its chunk) and pihat (the Dirichlet posterior) per chunk."""
    chunks = state.chunks
    if not chunks:
        return {}
    k, n_eff = k_F([c.phi for c in chunks])
    lp = state.rollouts.logprobs_B_T.detach().float().cpu()
    sums = torch.tensor([float(lp[c.row, c.start:c.start + c.length].sum()) for c in chunks], dtype=torch.float64)
    lens = torch.tensor([float(c.length) for c in chunks], dtype=torch.float64)
    pibar = pibar_F(sums, lens)
    pihat = pihat_F(k, n_eff, pibar, alpha)
    for c, pb, ph in zip(chunks, pibar.tolist(), pihat.tolist()):
        c.pibar, c.pihat = pb, ph
    pihats = pihat.tolist()
    kn = [sum(c.phi) / len(c.phi) for c in chunks if c.phi]
    return {
        "pihat_mean": sum(pihats) / len(pihats), "pihat_min": min(pihats), "pihat_max": max(pihats),
        "k_over_n_mean": sum(kn) / len(kn) if kn else 0.0,
        "pibar_mean": sum(c.pibar for c in chunks) / len(chunks),
    }


def scatter_advantages(state: AuditState) -> dict[str, float]:
    """(B, T) advantages and audited-token mask from the chunk weights."""
    ids = state.rollouts.completion_ids
    state.advantages_B_T, state.audit_mask_B_T = advantages_B_T(tuple(ids.shape), state.chunks, ids.device)
    valid = state.rollouts.completion_mask.bool()
    amask = state.audit_mask_B_T
    return {
        "audited_tokens": float((amask & valid).sum()),
        "unaudited_tokens": float((~amask & valid).sum()),
        "completion_length_mean": float(valid.sum(-1).float().mean()),
    }


def teacher_metrics(chunks: list[ChunkAudit]) -> dict[str, float]:
    """What the step got from the teacher: samples, failures, exactness, fresh spend."""
    n = sum(len(c.samples) for c in chunks)
    return {
        "forks": float(len(chunks)),
        "teacher_samples": float(n),
        "teacher_failed_chunks": float(sum(c.failed for c in chunks)),
        "teacher_exact_share": (sum(s.exact for c in chunks for s in c.samples) / n) if n else 1.0,
        "teacher_cost_usd": sum(s.cost_usd for c in chunks for s in c.samples if not s.cached),
    }


def record_episode(state: AuditState, recorder: EpisodeRecorder | None) -> dict[str, float]:
    if recorder is not None:
        recorder.record_step(state.step, episode_dict(state.rollouts, state.starts, state.chunks))
    return {}


# --- the pipeline -----------------------------------------------------------------------------------
class Pipeline:
    """Audits a batch of rollouts: see the module docstring.

    `loop` is the event loop teacher calls run on: by default the process's one
    (`omniopd.event_loop.process_loop`), which the pipeline uses but never closes.
    `max_usd` and `skip_missing` configure the teacher wrappers it puts around `teacher`.
    """

    def __init__(self, teacher: Teacher, tokenizer, scheduler: ForkScheduler, phi: PhiFn, *, samples: int = 10,
                 alpha: float = 1.0, trim_slack: float = 0.2, token_factor: float = 1.3,
                 teacher_temperature: float | None = None, max_usd: float | None = None,
                 recorder: EpisodeRecorder | None = None, progress: bool = False, skip_missing: bool = False,
                 loop: EventLoop | None = None, extra_stages: list[Stage] | None = None):
        self.misses = ReplayMisses(teacher, strict=not skip_missing)
        self.spend = SpendLimit(self.misses, max_usd)
        self.teacher: Teacher = self.spend
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.phi = phi
        self.samples = samples
        self.alpha = alpha
        self.trim_slack = trim_slack
        self.teacher_max_tokens = math.ceil(token_factor * scheduler.chunk_tokens)
        self.teacher_temperature = teacher_temperature
        self.recorder = recorder
        self.progress = progress
        self.extra_stages = list(extra_stages or [])
        self.teacher_samples_total = 0
        self.samples_by_teacher: dict[str, int] = {}  # who wrote the samples (an API teacher, its fallback)
        self.loop = loop if loop is not None else process_loop()
        # phi runs here, one chunk at a time, never on the event loop (embedders are CPU/GPU work)
        self._scorer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="omniopd-phi")
        self._inflight: set[concurrent.futures.Future] = set()  # started rows not yet answered
        self._closed = False

    @property
    def spent_usd(self) -> float:
        return self.spend.spent_usd

    @property
    def replay_missed_forks(self) -> int:
        return self.misses.missed

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for f in list(self._inflight):  # a run that stopped early leaves started steps behind
            f.cancel()
        self._scorer.shutdown(wait=True)
        if not self.loop.closed:
            self.loop.run(self.teacher.aclose())

    # -- the step ---------------------------------------------------------------------------
    def audit(self, rollouts: Rollouts, step: int) -> AuditResult:
        return self.finish(self.start(rollouts, step))

    def start(self, rollouts: Rollouts, step: int) -> PendingAudit:
        """Choose the forks and send every completion's teacher requests; returns at once.

        All requests of a step reach the loop in one turn (an in-process teacher batches them
        into one `generate` the same way every run, so seeded runs repeat); each completion's
        chunks are then scored as their samples arrive.
        """
        state = AuditState(rollouts, step)
        pending = PendingAudit(state, [], time.perf_counter())
        state.metrics.update(fork_requests(state, self.scheduler, self.tokenizer, samples=self.samples,
                                           max_tokens=self.teacher_max_tokens, temperature=self.teacher_temperature))
        if not state.requests:
            return pending
        self.spend.check()  # the spend limit decides once per step, before its first request
        pending.bar = tqdm(total=len(state.requests), desc="teacher", unit="chunk", leave=False, disable=not self.progress)
        rows: dict[int, tuple[list[ChunkAudit], list[TeacherRequest]]] = {}
        for c, req in zip(state.chunks, state.requests):
            rows.setdefault(c.row, ([], []))
            rows[c.row][0].append(c)
            rows[c.row][1].append(req)
        fut = self.loop.submit(self._answer_rows(list(rows.values()), pending))
        self._inflight.add(fut)
        fut.add_done_callback(self._inflight.discard)
        pending.rows.append(fut)
        return pending

    def finish(self, pending: PendingAudit, step: int | None = None) -> AuditResult:
        """Wait for the step's samples, then pihat, extra stages, scatter, metrics, episode.

        `step` is the optimizer step that trains on this batch (default: the one it was started
        at); the episode is recorded under it, so a replay meets the batches in training order.
        """
        state = pending.state
        if step is not None:
            state.step = step
        t_wait = time.perf_counter()
        try:
            results = [r for f in pending.rows for r in f.result()]  # (teacher seconds, scorer seconds) per row
        except BaseException:
            for f in pending.rows:
                f.cancel()
            raise
        finally:
            if pending.bar is not None:
                pending.bar.close()
        t0 = time.perf_counter()
        m = state.metrics
        m["teacher_seconds"] = max((r[0] for r in results), default=0.0)
        m["audit_wait_seconds"] = t0 - t_wait
        phi_seconds = sum(r[1] for r in results)
        m.update(drop_replay_misses(state, self.replay_missed_forks))
        m.update(estimate_pihat(state, self.alpha))
        for stage in self.extra_stages:
            m.update(stage(state))
        m.update(scatter_advantages(state))
        m.update(teacher_metrics(state.chunks))
        self.teacher_samples_total += int(m["teacher_samples"])
        for c in state.chunks:
            for smp in c.samples:
                name = smp.teacher or "unknown"
                self.samples_by_teacher[name] = self.samples_by_teacher.get(name, 0) + 1
        m["teacher_cost_usd_total"] = self.spent_usd
        m["replay_missed_forks"] = float(self.replay_missed_forks)
        for k in ("pihat_mean", "pihat_min", "pihat_max", "k_over_n_mean", "pibar_mean"):
            m.setdefault(k, 0.0)
        m["scorer_seconds"] = phi_seconds + (time.perf_counter() - t0)
        m.update(record_episode(state, self.recorder))
        return AuditResult(state.advantages_B_T, state.audit_mask_B_T, state.chunks, state.starts, m,
                           rollouts=state.rollouts, extra=state.extra)

    async def _answer_rows(self, rows: list[tuple[list[ChunkAudit], list[TeacherRequest]]],
                           pending: PendingAudit) -> list[tuple[float, float]]:
        """Every completion's forks at once; a configuration error in any stops them all."""
        tasks = [asyncio.ensure_future(self._answer_row(cs, rs, pending)) for cs, rs in rows]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _answer_row(self, chunks: list[ChunkAudit], requests: list[TeacherRequest],
                          pending: PendingAudit) -> tuple[float, float]:
        """One completion's forks: all its requests at once, each chunk scored as its samples arrive."""
        loop = asyncio.get_running_loop()

        async def one(c: ChunkAudit, req: TeacherRequest) -> ChunkAudit:
            await await_samples(self.teacher, c, req, self.trim_slack)
            return c

        tasks = [asyncio.ensure_future(one(c, r)) for c, r in zip(chunks, requests)]
        scorer_s = 0.0
        try:
            for done in asyncio.as_completed(tasks):
                c = await done
                if pending.bar is not None:
                    pending.bar.update(1)
                if c.teacher_texts:
                    scorer_s += await loop.run_in_executor(self._scorer, score_phi, self.phi, c)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return time.perf_counter() - pending.started, scorer_s


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
                "sample_ids": [s.cache_id for s in c.samples],
                "teachers": [s.teacher for s in c.samples],
                "phi": c.phi, "k": sum(c.phi), "n_eff": len(c.phi), "pibar": c.pibar, "pihat": c.pihat,
                # each sample was cut to a prefix of this many characters before phi (what phi saw)
                "compared_chars": [len(t) for t in c.teacher_texts],
            }
            for c in chunks
        ],
    }
