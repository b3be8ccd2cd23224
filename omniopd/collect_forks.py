"""`omniopd collect --what forks --student S`: one round of semi-on-policy teacher data for a student snapshot.

The student samples `--generations` completions per prompt, in steps of `--prompts-per-step`
prompts as a training step would; the scheduler picks its fork points; the teacher's
continuations there are bought (live or batched). The requests are the ones a training step
sends — `omniopd.pipeline.fork_requests` over the same rollouts, with `--teacher-samples` and
`ceil(--teacher-token-factor * --chunk-tokens)` tokens — so their cache keys are training's.

The rollouts are recorded first, as a run's episodes in `<collect-dir>/forks/episodes.sqlite`
(token ids, behaviour log-probabilities, entropies): a rerun (after a crash, or to collect
batches) plans from the recorded rollouts, never from new ones, so what is in flight stays
wanted. Requests are always rebuilt from the recorded episode, exactly as `--replay` rebuilds
them. Once the continuations are stored, each episode is recorded again with its samples, so
`omniopd train --replay <collect-dir>/forks` trains on them offline, with no live request.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cache.episodes import EPISODES_FILE, EpisodeRecorder, Replay, encode_episode
from cache.store import SampleStore
from cache.teacher import request_key
from omniopd.config import TrainConfig
from providers.base import TeacherRequest

FORKS_DIR = "forks"


class _StoredSamples:
    """What `EpisodeRecorder` asks of a teacher: its spec and identity, and samples by id (from the store)."""

    def __init__(self, spec: str, identity: dict[str, Any], store: SampleStore) -> None:
        self.spec, self._identity, self.store = spec, identity, store

    def identity(self) -> dict[str, Any]:
        return self._identity

    def entries_for(self, ids: list[str]) -> dict[str, Any]:
        return {uid.hex(): e for uid, e in self.store.by_uid([bytes.fromhex(i) for i in ids]).items()}


def forks_dir(collect_dir: str | Path) -> Path:
    return Path(collect_dir).expanduser() / FORKS_DIR


def _scheduler(cfg: TrainConfig) -> Any:
    from scheduler import ForkScheduler

    s = cfg.scheduler
    return ForkScheduler(s.chunk_tokens, s.chunks_per_completion, s.batch_budget, s.selection)


def _requests(cfg: TrainConfig, episode: dict[str, Any], tokenizer: Any) -> tuple[Any, list[TeacherRequest]]:
    """A recorded step's fork requests, rebuilt as training (and `--replay`) rebuilds them."""
    from omniopd.pipeline import AuditState, fork_requests
    from omniopd.run_cache import rollouts_from_episode

    state = AuditState(rollouts_from_episode(episode, tokenizer), step=0)
    fork_requests(state, _scheduler(cfg), tokenizer, samples=int(cfg.teacher.samples or 1),
                  max_tokens=math.ceil(float(cfg.teacher.token_factor or 1.3) * cfg.scheduler.chunk_tokens),
                  temperature=cfg.teacher.temperature)
    return state, state.requests


def record_rollouts(cfg: TrainConfig, prompts: list[list[dict[str, str]]], out: Path, spec: str,
                    identity: dict[str, Any], store: SampleStore, echo: Any = print) -> None:
    """Sample the student's rollouts for every prompt and record them (once: a rerun keeps them)."""
    from omniopd.models import load_causal_lm
    from omniopd.pipeline import episode_dict
    from omniopd.rollouts import generate_rollouts

    if (out / EPISODES_FILE).is_file():
        return
    model, tok = load_causal_lm(cfg.student.model)
    model.eval()
    G, P = cfg.student.generations, cfg.learner.prompts_per_step
    recorder = EpisodeRecorder(out, teacher=_StoredSamples(spec, identity, store),  # type: ignore[arg-type]
                               meta={"config": cfg.to_dict(), "collected_by": "omniopd collect --what forks"})
    try:
        for step, i in enumerate(range(0, len(prompts), P), start=1):
            batch = [p for p in prompts[i:i + P] for _ in range(G)]
            rollouts = generate_rollouts(model, tok, batch, max_new_tokens=cfg.student.max_new_tokens,
                                         temperature=cfg.student.temperature, generator_seed=cfg.learner.seed + step)
            recorder.record_step(step, episode_dict(rollouts, [], []))
            echo(f"forks: step {step}: {len(batch)} student rollouts recorded")
    finally:
        recorder.close()


def fork_requests_for(cfg: TrainConfig, out: Path) -> list[tuple[list[dict[str, str]], TeacherRequest]]:
    """(prompt, request) for every fork of every recorded rollout."""
    from omniopd.models import load_tokenizer

    tok = load_tokenizer(cfg.student.model)
    replay = Replay(out)
    try:
        out_reqs = []
        for step, rank in replay.entries():
            state, reqs = _requests(cfg, replay.episode(step, rank), tok)
            out_reqs += [(state.rollouts.prompts[c.row], r) for c, r in zip(state.chunks, reqs)]
        return out_reqs
    finally:
        replay.close()


def record_fork_samples(cfg: TrainConfig, out: Path, identity: dict[str, Any], store: SampleStore) -> int:
    """Record each episode again with its forks and the stored continuations; returns forks with samples."""
    from omniopd.models import load_tokenizer
    from omniopd.pipeline import episode_dict

    tok = load_tokenizer(cfg.student.model)
    replay = Replay(out)
    try:
        entries = replay.entries()
        episodes = {(s, r): replay.episode(s, r) for s, r in entries}
        run = replay.run
    finally:
        replay.close()
    answered = 0
    with SampleStore(out / EPISODES_FILE, "read-write") as ep_store:
        for (step, rank), ep in episodes.items():
            state, reqs = _requests(cfg, ep, tok)
            used = []
            pools = store.pools([request_key(identity, r) for r in reqs])
            for chunk, req in zip(state.chunks, reqs):
                pool = list(pools.get(request_key(identity, req), ()))[: req.n]
                chunk.samples = [e.sample for e in pool]
                chunk.teacher_texts = [e.sample.text for e in pool]
                used += pool
                answered += bool(pool)
            blob = episode_dict(state.rollouts, state.starts, state.chunks)
            ep_store.put_episode(run, step, encode_episode(blob), used, rank=rank)
    return answered
