"""One small real run for the report/inspect/export tests, made once per test session.

A tiny in-process student (tests/tiny.py) trains 2 steps against the real Anthropic SDK talking
to the fake provider server (so samples carry tokens, cost and a continuation mode), with
`--log-completions` and tensorboard on; then a real `omniopd eval` result of the trained model
goes into the run directory as eval.json. `tiny_run(tmp_path_factory)` returns the run
directory; the run is made on first use and shared by every module that asks.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import TrainerCallback

from omniopd.config import build_config

_RUNS: dict[str, Path] = {}
MID_RUN: dict[str, object] = {}  # what `omniopd report` saw while the run was at step 1


class ReportMidRun(TrainerCallback):
    """Builds the report while training is still going: after step 1's log line, the recorder open."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step != 1 or MID_RUN:
            return
        from omniopd.report import build_report
        from omniopd.run_data import RunData

        with RunData.open(args.output_dir) as data:
            result = build_report(data, self.out)
            MID_RUN.update(status=data.status(), steps=data.steps(), metrics=len(data.metrics),
                           plots=[p.stem for p in result.plots], forks=len(data.forks()))


def run_config(out: Path, cache_file: Path, **extra) -> object:
    return build_config({
        "method": {"name": "omniopd"},
        "student": {"generations": 2, "max_new_tokens": 24},
        "teacher": {"spec": "claude-haiku", "samples": 3, "no_fallback": True, "rpm": 6000},
        "scheduler": {"chunk_tokens": 6, "chunks_per_completion": 2},
        "scorer": {"similarity": "edit"},
        "learner": {"max_steps": 2, "learning_rate": 5e-3, "prompts_per_step": 2, "seed": 0},
        "output": {"dir": str(out), "save_steps": 100, **extra.pop("output", {})},
        "cache": {"path": str(cache_file), **extra.pop("cache", {})},
        **extra,
    })


def tiny_run(tmp_path_factory) -> Path:
    if "run" in _RUNS:
        return _RUNS["run"]
    from omniopd.evaluate import evaluate, write_report
    from omniopd.train import run_train
    from tests.fake_providers import FakeProviderServer
    from tests.tiny import tiny_llama, tiny_tokenizer

    base = tmp_path_factory.mktemp("report-run")
    tok = tiny_tokenizer()
    model = tiny_llama(tok, seed=0)
    cfg = run_config(base / "run", base / "teacher.sqlite", output={"log_completions": True, "report_to": "tensorboard"})
    with FakeProviderServer() as server:
        saved = {k: os.environ.get(k) for k in server.env()}
        os.environ.update(server.env())
        try:
            run_train(cfg, model=model, tokenizer=tok, echo=False, extra_callbacks=[ReportMidRun(base / "midrun-report")])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    rows = [{"prompt": [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many?"}], "answer": "8"},
            {"prompt": [{"role": "user", "content": "What is 7 plus 5?"}], "answer": "12"}]
    write_report(evaluate(model, tok, rows, model_name=str(base / "run"), data_name="two problems", max_new_tokens=8,
                          batch_size=2, progress=False), base / "run" / "eval.json")
    _RUNS["run"] = base / "run"
    return _RUNS["run"]
