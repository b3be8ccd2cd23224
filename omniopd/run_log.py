"""Per-step metrics: `metrics.jsonl` (one JSON object per optimizer step) and a one-line summary.

The console shows one progress bar for the run (`StepProgress`, TRL's own step bar without its
per-step dict of ~35 stringified values) and `MetricsLogger`'s one line per step; every figure
still goes to `metrics.jsonl` and to the `report_to` backends, which see TRL's logs unchanged.

A `TrainerCallback`, so it sees exactly what TRL logs (and `report_to` backends get the same
numbers). Each line has at least `step`, `reward_mean` (mean chunk weight pihat), `kl` (mean
exact KL on unaudited tokens), `forks`, `teacher_samples`, `seconds`; the rest of TRL's and
omniopd's metrics follow under their own names. In a multi-process run the values are the
run's (reduced over processes by the learner) and only rank 0 writes and prints.

`teacher_cost_usd_total` is the run's spend ledger (`omniopd/ledger.py`): every dollar the run
paid, across `--resume` and all ranks. `teacher_samples_total` continues across `--resume`:
each row's value is also written into the trainer state's log history, which checkpoints
carry, and a resumed run starts from the last value before its checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

# metrics.jsonl's fixed names -> the logged metric that feeds them
_CONTRACT = {
    "reward_mean": "omniopd/pihat_mean",
    "kl": "omniopd/kl",
    "forks": "omniopd/forks",
    "teacher_samples": "omniopd/teacher_samples",
}


class MetricsLogger(TrainerCallback):
    """Appends one line per logged step to `<output>/metrics.jsonl` and prints a summary line."""

    def __init__(self, path: str | Path, pipeline=None, clock=time.perf_counter, echo: bool = True, ledger=None):
        self.path = Path(path)
        self.pipeline = pipeline
        self.ledger = ledger
        self._samples_before = 0  # teacher_samples_total at the checkpoint this run resumed from
        self.clock = clock
        self.echo = echo
        self._last = None
        self._counts: dict = {}  # the cache's counters at the last logged step

    def _cache_hits(self) -> dict[str, float]:
        """`cache_hit_rate`: share of this step's requested teacher samples served from the cache."""
        teacher, counts = getattr(self.pipeline, "teacher", None), None
        for _ in range(8):  # the CachedTeacher under the pipeline's wrappers (spend limit, replay misses)
            counts = getattr(teacher, "counts", None)
            if isinstance(counts, dict) and "requested" in counts or teacher is None:
                break
            teacher = getattr(teacher, "inner", None)
        if not isinstance(counts, dict) or "requested" not in counts:
            return {}
        before, self._counts = self._counts, dict(counts)
        asked = counts["requested"] - before.get("requested", 0)
        served = counts.get("from_cache", 0) - before.get("from_cache", 0)
        out = {"cache_served_total": float(counts.get("from_cache", 0))}
        if asked > 0:
            out["cache_hit_rate"] = served / asked
        return out

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed state holds the log history up to its checkpoint
        self._samples_before = next((h["teacher_samples_total"] for h in reversed(state.log_history)
                                     if "teacher_samples_total" in h), 0)

    def log_stop(self, state, reason: str) -> None:
        """One closing row when the run stops early (the spend cap): where, why, and the totals."""
        if not state.is_world_process_zero:
            return
        row = {"step": state.global_step, "stopped": reason}
        if self.pipeline is not None:
            row["teacher_samples_total"] = self._samples_before + self.pipeline.teacher_samples_total
        if self.ledger is not None:
            row["teacher_cost_usd_total"] = self.ledger.spent
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last is None:
            self._last = self.clock()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs and not any(k.startswith("omniopd/") for k in logs):
            return  # the end-of-training summary log, not a step
        if not state.is_world_process_zero:
            return  # values are reduced over processes by the learner; rank 0 writes them once
        now = self.clock()
        row = {"step": state.global_step}
        for key, src in _CONTRACT.items():
            row[key] = float(logs.get(src, 0.0))
        row["seconds"] = now - (self._last or now)
        self._last = now
        if self.pipeline is not None:  # the learner logs the sample count summed over processes; the ledger is global
            row["teacher_samples_total"] = self._samples_before + logs.get("omniopd/teacher_samples_total",
                                                                           self.pipeline.teacher_samples_total)
            row["teacher_cost_usd_total"] = (self.ledger.spent if self.ledger is not None
                                             else logs.get("omniopd/teacher_cost_usd_total", self.pipeline.spent_usd))
            row["teacher_samples_by_teacher"] = dict(self.pipeline.samples_by_teacher)
            row.update(self._cache_hits())
            if state.log_history:  # carried by the next checkpoint, read back on resume
                state.log_history[-1]["teacher_samples_total"] = row["teacher_samples_total"]
        for k, v in logs.items():
            if isinstance(v, (int, float)) and k not in row:
                row[k.replace("omniopd/", "")] = v
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.echo:  # tqdm.write keeps the run's progress bar below the line
            tqdm.write(step_line(row, logs))


def _any_process(flag: bool) -> bool:
    """True on every process when it is true on any: ranks read the shared ledger at slightly
    different moments, and one rank stopping alone would leave the others waiting in DDP."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return flag
    import torch
    from accelerate.utils import gather

    return bool(gather(torch.tensor([flag], device=state.device)).any())


class BudgetStop(TrainerCallback):
    """Stops training after the step whose teacher spend reached `--max-teacher-usd`, with a checkpoint.

    Through TRL's own control flow (`should_save`, `should_training_stop`): the step that
    reached the cap is saved like any checkpoint, so `--resume` continues from it.
    """

    def __init__(self, pipeline, max_usd: float | None) -> None:
        self.pipeline, self.max_usd = pipeline, max_usd
        self.reason: str | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.pipeline is None or self.max_usd is None or not _any_process(self.pipeline.spent_usd >= self.max_usd):
            return control
        if state.global_step < state.max_steps:
            self.reason = (f"teacher spend ${self.pipeline.spent_usd:.4f} reached --max-teacher-usd {self.max_usd}; "
                           "the run stopped cleanly — raise the limit and rerun with --resume to continue")
        control.should_save = True
        control.should_training_stop = True
        return control


class StepProgress(ProgressCallback):
    """transformers' step progress bar, minus the raw dict it writes under the bar at every log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return None


def quiet_console(trainer, echo: bool) -> None:
    """One progress bar (the run's steps) and no dict printer; with `echo=False`, no bar either."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if echo:
        trainer.add_callback(StepProgress())


def step_line(row: dict, logs: dict) -> str:
    """The console's one line per step. SFT shows its cross-entropy (its surrogate `loss` is -1 by
    construction: -A * ratio at ratio 1); the on-policy methods show pi_hat, the anchor and forks."""
    if "omniopd/sft_prompts" in logs:
        # chunk_loss = -sum A * log pi / tokens: the mean token cross-entropy of the positive targets
        # (minus the negatives' weighted log-prob when --sft-negatives is on)
        return (f"step {row['step']:>4} | cross-entropy {logs.get('omniopd/chunk_loss', float('nan')):.4f}"
                f" | prompts bought {int(logs.get('omniopd/sft_prompts_bought', 0))}"
                f" | teacher samples {int(row['teacher_samples'])}"
                f" | ${row.get('teacher_cost_usd_total', 0.0):.4f} | {row['seconds']:.1f}s")
    return (f"step {row['step']:>4} | pihat {row['reward_mean']:.3f} | kl {row['kl']:.4f} | forks {int(row['forks'])}"
            f" | teacher samples {int(row['teacher_samples'])} | loss {logs.get('loss', float('nan')):.4f}"
            f" | {row['seconds']:.1f}s")
