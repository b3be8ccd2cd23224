"""How `omniopd train` uses `cache/`: the cached teacher, the episode recorder, offline replay.

`open_run_cache(cfg, out, make_teacher)` decides, from the `cache` config section:
- normal runs: the teacher `make_teacher()` builds is wrapped in a `CachedTeacher` on
  `--cache` (default: the user-level file) in `--cache-mode`, so nothing bought is paid for
  twice — including by a `--resume`d run re-sampling forks of the step it was killed in;
- `--replay RUN`: `make_teacher` is never called (no provider, no network); the teacher serves
  only the recorded samples and `ReplayRollouts` feeds the recorded rollouts (token ids and
  behaviour log-probabilities) to the learner instead of generating;
- unless `--no-episodes`, an `EpisodeRecorder` writes every step to `<output>/episodes.sqlite`;
- with a `ledger` (`omniopd/ledger.py`), the teacher is wrapped in a `BudgetedTeacher` inside
  the cache: every request the cache cannot serve reserves its worst case first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cache.episodes import EpisodeRecorder, Replay, episodes_path
from cache.paths import resolve_cache_path
from cache.teacher import CachedTeacher
from omniopd.config import TrainConfig
from omniopd.errors import ConfigError, ReplayError
from omniopd.processes import process_rank
from omniopd.rollouts import Rollouts, pad_rows_B_T
from providers.base import Teacher

log = logging.getLogger("omniopd")


class ReplayRollouts:
    """Recorded rollouts, in step order, rebuilt as the `Rollouts` the pipeline audits.

    A multi-process run recorded one episode per process per step; replay serves all of them:
    the entries, in (step, rank) order, are dealt to this run's processes round-robin (`rank`
    of `world`), so replaying with the recorded process count gives each rank its own
    rollouts, and a single process replays every rank's (world x the recorded steps).
    """

    def __init__(self, replay: Replay, tokenizer, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.replay = replay
        self.tokenizer = tokenizer
        self.entries = replay.entries()[rank::world]
        if not self.entries:
            raise ReplayError(f"--replay {replay.path}: the run recorded no steps")
        self.batch_size = batch_size

    @property
    def steps(self) -> list[int]:
        return [s for s, _ in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def episode(self, index: int) -> dict[str, Any]:
        if index >= len(self.entries):
            raise ReplayError(f"--replay: the recorded run has {len(self.entries)} steps; asked for step {index + 1} (lower --max-steps)")
        return self.replay.episode(*self.entries[index])

    def rollouts(self, index: int) -> Rollouts:
        return rollouts_from_episode(self.episode(index), self.tokenizer, self.batch_size)


def rollouts_from_episode(ep: dict[str, Any], tokenizer, batch_size: int | None = None) -> Rollouts:
    """Left-pad the prompts and right-pad the completions of a recorded episode."""
    comp, prompts = ep["completion_ids"], ep["prompt_ids"]
    B = len(comp)
    if batch_size is not None and B != batch_size:
        raise ReplayError(
            f"--replay: the recorded steps have {B} completions each, this config makes batches of {batch_size}; "
            "keep --prompts-per-step and --generations as recorded"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Rollouts(
        prompt_ids=pad_rows_B_T(prompts, pad, torch.long, left=True),
        prompt_mask=pad_rows_B_T([[1] * len(p) for p in prompts], 0, torch.long, left=True),
        completion_ids=pad_rows_B_T(comp, pad, torch.long),
        completion_mask=pad_rows_B_T([[1] * len(c) for c in comp], 0, torch.long),
        logprobs_B_T=pad_rows_B_T(ep["behaviour_logprobs"], 0.0, torch.float32),
        entropy_B_T=pad_rows_B_T(ep["entropies"], 0.0, torch.float32),
        prompts=ep["prompts"],
        completions=tokenizer.batch_decode(comp, skip_special_tokens=True),
    )


@dataclass
class RunCache:
    """What the cache config gives the run; `close()` after the pipeline closed the teacher."""

    teacher: Teacher
    recorder: Any
    replay: Replay | None = None

    def close(self) -> None:
        if isinstance(self.teacher, CachedTeacher):
            self.teacher.close()  # idempotent: flushes anything still queued
        if isinstance(self.recorder, EpisodeRecorder):
            self.recorder.close()
        if self.replay is not None:
            self.replay.close()

    def summary(self) -> str:
        t = self.teacher
        if not isinstance(t, CachedTeacher):
            return ""
        c = t.counts
        line = f"cache: {c['from_cache']} of {c['requested']} teacher samples served from {t.store.path if t.store else 'memory'}"
        if self.replay is not None:
            line += f"; replay: {c['misses']} samples not recorded"
        return line


def open_run_cache(cfg: TrainConfig, out: Path, make_teacher: Callable[[], Teacher], recorder: Any = None,
                   ledger: Any = None) -> RunCache:
    """See the module docstring. A `recorder` passed in replaces the episode recorder."""
    c = cfg.cache
    replay = None
    if c.replay is not None:
        if episodes_path(c.replay).resolve() == episodes_path(out).resolve():
            raise ConfigError("--replay and --output name the same run; write the replayed run to another --output")
        replay = Replay(c.replay)
        teacher: Teacher = replay.teacher()
        log.info("replaying %s (%d recorded steps): no teacher is constructed", replay.path, len(replay.steps()))
    else:
        inner = make_teacher()
        if ledger is not None:
            from omniopd.spend import BudgetedTeacher

            inner = BudgetedTeacher(inner, ledger)
        path = None if c.mode == "off" else resolve_cache_path(c.path)
        teacher = CachedTeacher(inner, path, c.mode)
        if path is not None:
            log.info("teacher-sample cache: %s (%s)", path, c.mode)
    if recorder is None and not c.no_episodes:
        meta = {"config": cfg.to_dict(), "replayed_from": str(replay.path) if replay else None}
        recorder = EpisodeRecorder(out, teacher=teacher, meta=meta, rank=process_rank())  # type: ignore[arg-type]
    return RunCache(teacher, recorder, replay)
