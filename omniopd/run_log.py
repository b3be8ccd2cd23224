"""Per-step metrics: `metrics.jsonl` (one JSON object per optimizer step) and a one-line summary.

A `TrainerCallback`, so it sees exactly what TRL logs (and `report_to` backends get the same
numbers). Each line has at least `step`, `reward_mean` (mean chunk weight pihat), `kl` (mean
exact KL on unaudited tokens), `forks`, `teacher_samples`, `seconds`; the rest of TRL's and
omniopd's metrics follow under their own names. In a multi-process run the values are the
run's (reduced over processes by the learner) and only rank 0 writes and prints.
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

    def __init__(self, path: str | Path, pipeline=None, clock=time.perf_counter, echo: bool = True):
        self.path = Path(path)
        self.pipeline = pipeline
        self.clock = clock
        self.echo = echo
        self._last = None

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
        if self.pipeline is not None:  # the learner logs them summed over processes; this process's otherwise
            row["teacher_samples_total"] = logs.get("omniopd/teacher_samples_total", self.pipeline.teacher_samples_total)
            row["teacher_cost_usd_total"] = logs.get("omniopd/teacher_cost_usd_total", self.pipeline.spent_usd)
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
