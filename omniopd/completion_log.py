"""`--log-completions`: each step's completion table and fork table, sent where `--report-to` points.

The completion table goes through TRL's own completion logging: with
`GRPOConfig(log_completions=True)` TRL's `GRPOTrainer.log` prints a sample with rich, writes
`<output>/completions/completions_NNNNN.parquet` and logs a `completions` table to wandb and
trackio — from the trainer's `_logs` buffers, which TRL fills in the
`_generate_and_score_completions` that `OmniOPDTrainer` replaces. This module fills those
buffers from each step's recorded episode: prompt, completion, reward column `pihat_mean`
(mean π̂ of the completion's forks; NaN when none), advantage (mean per-token advantage over
the completion) and extra columns (`forks`, `pihat`, `mean_entropy`).

The fork table is ours (TRL has no such thing): one row per audited fork (step, completion,
start, π̂, k, N_eff, π̄, the student's chunk, the teacher's continuations as φ-compared, φ
each), written to `completions/forks_NNNNN.parquet`, logged as a `forks` table to wandb and
trackio the way TRL logs its own, and — since TRL sends no tables to tensorboard — both tables
go to tensorboard as markdown text (`completions`, `forks`).

It is the pipeline's episode recorder (forwarding to the real one), so it sees exactly what was
recorded; `attach(trainer)` once the trainer exists. With several processes each fills its own
buffers (TRL gathers prompts across ranks; this does not): the tables then show the main
process's share.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from omniopd.export import fork_row
from omniopd.run_data import forks_from_episode, prompt_text, sample_view, train_step


def _markdown(rows: list[dict[str, Any]], columns: list[str], limit: int = 300) -> str:
    def cell(v: Any) -> str:
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= limit else text[:limit] + "…"

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |\n" for r in rows)


class CompletionLog(TrainerCallback):
    """See the module docstring. `then` is the recorder the episodes go on to (or None)."""

    FORK_COLUMNS = ["step", "completion", "fork", "start_token", "pihat", "k", "n_eff", "pibar", "student_chunk",
                    "teacher_compared", "phi"]

    def __init__(self, tokenizer, teacher=None, then=None, trim_slack: float = 0.2) -> None:
        self.tokenizer = tokenizer
        self.teacher = teacher  # a CachedTeacher: the samples by id (entries_for)
        self.then = then
        self.trim_slack = trim_slack
        self.trainer = None
        self._forks: list[dict[str, Any]] = []
        self._completions: list[dict[str, Any]] = []

    def attach(self, trainer) -> None:
        self.trainer = trainer

    # -- the recorder side ----------------------------------------------------------------------
    def record_step(self, step: int, episode: dict[str, Any]) -> None:
        if self.then is not None:
            self.then.record_step(step, episode)
        self._collect(step, episode)

    def _lookup(self, ids: list) -> dict:
        entries_for = getattr(self.teacher, "entries_for", None)
        if entries_for is None:
            return {}
        return {cid: sample_view(cid, e.sample) for cid, e in entries_for([i for i in ids if i]).items()}

    def _collect(self, episode_step: int, ep: dict[str, Any]) -> None:
        step = train_step(episode_step)
        forks = forks_from_episode(step, ep, self._lookup, self.tokenizer, self.trim_slack)
        self._forks = [fork_row("run", f) for f in forks]
        comps = ep.get("completion_ids") or []
        prompts = ep.get("prompts") or []
        texts = self.tokenizer.batch_decode(comps, skip_special_tokens=True)
        self._completions = []
        for b, ids in enumerate(comps):
            mine = [f for f in forks if f.completion == b]
            ents = (ep.get("entropies") or [[]] * len(comps))[b]
            adv = sum(f.pihat * f.length for f in mine) / max(1, len(ids))
            self._completions.append({
                "step": step, "prompt": prompts[b] if b < len(prompts) else "", "completion": texts[b],
                "pihat_mean": sum(f.pihat for f in mine) / len(mine) if mine else math.nan, "advantage": adv,
                "forks": len(mine), "pihat": ", ".join(f"{f.pihat:.3f}" for f in mine),
                "mean_entropy": sum(ents) / len(ents) if ents else 0.0,
            })
        t = self.trainer
        if t is None or not getattr(t, "log_completions", False):
            return
        logs = t._logs  # TRL's buffers, consumed by GRPOTrainer.log
        for r in self._completions:
            logs["prompt"].append(r["prompt"])
            logs["completion"].append(r["completion"])
            logs["rewards"]["pihat_mean"].append(r["pihat_mean"])
            logs["advantages"].append(r["advantage"])
            for col in ("forks", "pihat", "mean_entropy"):
                logs["extra"][col].append(r[col])

    # -- the logging side -----------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._forks and not self._completions or not state.is_world_process_zero:
            return
        import pandas as pd

        step = state.global_step
        out = Path(args.output_dir) / "completions"
        out.mkdir(parents=True, exist_ok=True)
        forks = pd.DataFrame(self._forks, columns=self.FORK_COLUMNS + ["teacher_texts", "teachers", "sample_ids"])
        forks.to_parquet(out / f"forks_{step:05d}.parquet")
        report_to = args.report_to or []
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({"forks": wandb.Table(dataframe=forks.astype(str))})
        if "trackio" in report_to:
            import trackio

            trackio.log({"forks": trackio.Table(dataframe=forks.astype(str))})
        writer = self._tensorboard()
        if writer is not None:
            comp_cols = ["step", "prompt", "completion", "pihat_mean", "advantage", "forks", "pihat", "mean_entropy"]
            rows = [{**r, "prompt": prompt_text(r["prompt"])} for r in self._completions]
            writer.add_text("completions", _markdown(rows, comp_cols), step)
            writer.add_text("forks", _markdown(self._forks, self.FORK_COLUMNS), step)
            writer.flush()
        self._forks, self._completions = [], []

    def _tensorboard(self):
        if self.trainer is None:
            return None
        for cb in self.trainer.callback_handler.callbacks:
            writer = getattr(cb, "tb_writer", None)
            if writer is not None:
                return writer
        return None

