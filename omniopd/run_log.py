"""Per-step metrics: `metrics.jsonl` (one JSON object per optimizer step) and a one-line summary.

A `TrainerCallback`, so it sees exactly what TRL logs (and `report_to` backends get the same
numbers). Each line has at least `step`, `reward_mean` (mean chunk weight pihat), `kl` (mean
exact KL on unaudited tokens), `forks`, `teacher_samples`, `seconds`; the rest of TRL's and
omniopd's metrics follow under their own names.

`teacher_cost_usd_total` is the run's spend ledger (`omniopd/ledger.py`): every dollar the run
paid, across `--resume` and all ranks. `teacher_samples_total` continues across `--resume`:
each row's value is also written into the trainer state's log history, which checkpoints
carry, and a resumed run starts from the last value before its checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

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

    def on_train_begin(self, args, state, control, **kwargs):
        # a resumed state holds the log history up to its checkpoint
        self._samples_before = next((h["teacher_samples_total"] for h in reversed(state.log_history)
                                     if "teacher_samples_total" in h), 0)

    def log_stop(self, state, reason: str) -> None:
        """One closing row when the run stops early (the spend cap): where, why, and the totals."""
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
        now = self.clock()
        row = {"step": state.global_step}
        for key, src in _CONTRACT.items():
            row[key] = float(logs.get(src, 0.0))
        row["seconds"] = now - (self._last or now)
        self._last = now
        if self.pipeline is not None:
            row["teacher_samples_total"] = self._samples_before + self.pipeline.teacher_samples_total
            row["teacher_cost_usd_total"] = self.ledger.spent if self.ledger is not None else self.pipeline.spent_usd
            if state.log_history:  # carried by the next checkpoint, read back on resume
                state.log_history[-1]["teacher_samples_total"] = row["teacher_samples_total"]
        for k, v in logs.items():
            if isinstance(v, (int, float)) and k not in row:
                row[k.replace("omniopd/", "")] = v
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.echo:
            print(
                f"step {row['step']:>4} | pihat {row['reward_mean']:.3f} | kl {row['kl']:.4f} | forks {int(row['forks'])}"
                f" | teacher samples {int(row['teacher_samples'])} | loss {logs.get('loss', float('nan')):.4f}"
                f" | {row['seconds']:.1f}s",
                flush=True,
            )
