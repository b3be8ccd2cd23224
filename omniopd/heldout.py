"""What the user's money bought: held-out accuracy during training, against teacher dollars.

With `--eval-every N` and `--eval-data FILE` (rows with the prompt and `--answer-field`), the run
scores the student on the held-out problems (greedy, `omniopd.evaluate`) before the first step,
every N optimizer steps and at the last one, and appends one JSON line per evaluation to
`<run>/heldout.jsonl`: the step, the accuracy, the problems scored, and the run's teacher spend and
samples so far (from the spend ledger, resumes included). `omniopd report` plots accuracy against
those dollars — the curve every recipe is judged by.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger("omniopd")

HELDOUT_FILE = "heldout.jsonl"


class HeldOutEval(TrainerCallback):
    """Evaluates at step 0, every `every` steps and at the last step; rank 0 writes the rows."""

    def __init__(self, path: str | Path, rows: list[dict[str, Any]], tokenizer, *, every: int, max_new_tokens: int,
                 ledger: Any = None, teacher_side: Any = None, data_name: str = "held-out",
                 batch_size: int = 16) -> None:
        if every < 1:
            raise ValueError(f"HeldOutEval: every must be >= 1; got {every}")
        self.path = Path(path)
        self.rows = rows
        self.tokenizer = tokenizer
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.ledger = ledger
        self.teacher_side = teacher_side
        self.data_name = data_name
        self.batch_size = batch_size
        self._done: set[int] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._evaluate(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        last = state.global_step >= state.max_steps or control.should_training_stop
        if state.global_step % self.every == 0 or last:
            self._evaluate(state, model)
        return control

    def _evaluate(self, state, model) -> None:
        from omniopd.evaluate import evaluate

        if not state.is_world_process_zero or model is None or state.global_step in self._done:
            return
        self._done.add(state.global_step)
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        try:
            res = evaluate(model, self.tokenizer, self.rows, model_name=f"step {state.global_step}",
                           data_name=self.data_name, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                           progress=False, keep_texts=False)
        finally:
            if was_training:
                model.train()
        row = {"step": state.global_step, "greedy_accuracy": res.greedy_accuracy, "n": res.n,
               "no_answer_rate": res.no_answer_rate, "seconds": time.perf_counter() - t0,
               "teacher_usd": float(self.ledger.spent) if self.ledger is not None else 0.0,
               "teacher_samples": int(getattr(self.teacher_side, "teacher_samples_total", 0) or 0)}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        log.info("held-out accuracy at step %d: %.3f (%d problems, $%.4f spent)", row["step"], row["greedy_accuracy"],
                 row["n"], row["teacher_usd"])

