"""`omniopd collect --only-failures`: teacher solutions only for the prompts the student fails.

The `--student` samples `--generations` answers per prompt (steps of `--prompts-per-step`
prompts, at `--temperature`, seeded by `--seed`); the math verifier (`omniopd.answers`) checks
each against the reference (`--answer-field`). A prompt *fails* when none of its answers is
correct: the student cannot solve it yet, and that is where a bought solution teaches most per
dollar.

The verdicts are recorded once in `<collect-dir>/failures.json`, keyed by the student and the
sampling settings: a rerun (to resume batches, or after a crash) buys for the same prompts
instead of re-sampling a different failure set. Another student or settings sample afresh.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from omniopd.config import TrainConfig
from omniopd.errors import DataError
from providers.base import stable_hash

FAILURES_FILE = "failures.json"


def _settings(cfg: TrainConfig) -> dict[str, Any]:
    s = cfg.student
    return {"student": s.model, "generations": s.generations, "max_new_tokens": s.max_new_tokens,
            "temperature": s.temperature, "seed": cfg.learner.seed, "system_prompt": s.system_prompt}


def failing_prompts(cfg: TrainConfig, rows: list[dict[str, Any]], out: Path,
                    echo: Callable[[str], None] = print) -> list[list[dict[str, str]]]:
    """The prompts of `rows` whose student answers are all wrong (see the module docstring)."""
    if any(r.get("answer") is None for r in rows):
        raise DataError("--only-failures checks the student's answers against a reference: set --answer-field "
                        "(GSM8K: answer) to a field every row has")
    file = out / FAILURES_FILE
    settings = _settings(cfg)
    verdicts: dict[str, bool] = {}
    if file.is_file():
        saved = json.loads(file.read_text())
        if saved.get("settings") == settings:
            verdicts = saved.get("failed", {})
    todo = [r for r in rows if _id(r) not in verdicts]
    if todo:
        verdicts.update(_verdicts(cfg, todo, echo))
        out.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": settings, "failed": verdicts}, sort_keys=True))
        os.replace(tmp, file)  # a crash leaves the old file or the new one, never half of one
    failed = [r["prompt"] for r in rows if verdicts[_id(r)]]
    echo(f"only failures: the student fails {len(failed)} of {len(rows)} prompts (none of its "
         f"{cfg.student.generations} answers correct); buying solutions for those")
    return failed


def _id(row: dict[str, Any]) -> str:
    return stable_hash({"prompt": row["prompt"], "answer": row["answer"]})[:24]


def _verdicts(cfg: TrainConfig, rows: list[dict[str, Any]], echo: Callable[[str], None]) -> dict[str, bool]:
    from omniopd.answers import is_correct
    from omniopd.models import load_causal_lm
    from omniopd.rollouts import generate_rollouts

    model, tok = load_causal_lm(cfg.student.model)
    model.eval()
    G, P = cfg.student.generations, cfg.learner.prompts_per_step
    out: dict[str, bool] = {}
    for step, i in enumerate(range(0, len(rows), P), start=1):
        part = rows[i:i + P]
        r = generate_rollouts(model, tok, [row["prompt"] for row in part for _ in range(G)],
                              max_new_tokens=cfg.student.max_new_tokens, temperature=cfg.student.temperature,
                              generator_seed=cfg.learner.seed + step)
        for j, row in enumerate(part):
            answers = r.completions[j * G:(j + 1) * G]
            out[_id(row)] = not any(is_correct(a, row["answer"]) for a in answers)
    echo(f"only failures: sampled {G} student answers for each of {len(rows)} prompts")
    return out
