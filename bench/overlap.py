"""Does `--async-steps 1` hide the teacher's latency? The real training loop, timed.

    python bench/overlap.py [--latency 2.0] [--steps 5] [--max-new-tokens 256]

Runs `run_train` (the real pipeline, learner and OpenAI SDK) on a tiny in-process student
against the local fake API server (tests/fake_providers.py) that answers every request after a
fixed latency, once with `--async-steps 0` and once with `--async-steps 1`. Per step it reads
three phases from metrics.jsonl: rollout (sampling), teacher (a batch's requests sent → all
answered) and update (TRL's step time minus sampling and the wait for the audit). The figure
of merit is step time over the slowest phase, measured in the same run: 1.0 means the other
phases are fully hidden behind the slowest, the sum of the phases means nothing overlaps.
The first step is left out of the means (warm-up; with async it also fills the queue).

The last line is `sync_step_over_slowest=<x> async_step_over_slowest=<y> speedup=<sync/async>`
(target from issue 11: async <= 1.15).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTIONS = ["Tom has 3 apples and buys 4 more. How many?", "A train leaves at noon and travels 3 hours.",
             "Add 7 and 5, then double it.", "Natalia sold 48 clips in April and half as many in May.",
             "A shop sells pens at 2 dollars each.", "Sam reads 12 pages a day for a week.",
             "A tank holds 40 litres and leaks 3 an hour.", "Mia has twice as many stickers as Leo."]


def phases(row: dict) -> dict[str, float]:
    rollout, wait = row["rollout_seconds"], row["audit_seconds"]
    return {"rollout": rollout, "teacher": row["teacher_seconds"], "update": max(0.0, row["step_time"] - rollout - wait),
            "step": row["seconds"]}


def run(async_steps: int, args, env: dict[str, str]) -> dict[str, float]:
    from omniopd.config import build_config
    from omniopd.train import run_train
    from tests.tiny import tiny_llama, tiny_tokenizer

    os.environ.update(env)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "prompts.jsonl")
        data.write_text("\n".join(json.dumps({"question": q}) for q in QUESTIONS))
        tok = tiny_tokenizer()
        cfg = build_config(None, {
            "data.path": str(data), "student.max_new_tokens": args.max_new_tokens, "student.generations": 4,
            "learner.prompts_per_step": 2, "learner.max_steps": args.steps, "learner.learning_rate": 1e-4,
            "learner.async_steps": async_steps, "learner.seed": 0,
            "teacher.spec": "openai:gpt-4.1-mini", "teacher.no_fallback": True, "teacher.samples": 4,
            "teacher.concurrency": 64, "teacher.rpm": 60_000,
            "scheduler.chunk_tokens": 8, "scheduler.chunks_per_completion": 2, "scorer.similarity": "edit",
            "cache.mode": "off", "output.dir": tmp + "/run", "output.save_steps": 10_000,
        })
        run_train(cfg, model=tiny_llama(tok, hidden=args.hidden, layers=args.layers), tokenizer=tok, echo=False)
        rows = [json.loads(x) for x in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
    timed = [phases(r) for r in rows[1:]]
    mean = {k: sum(p[k] for p in timed) / len(timed) for k in timed[0]}
    slowest = max(mean["rollout"], mean["teacher"], mean["update"])
    mean["over_slowest"] = mean["step"] / slowest
    print(f"async-steps {async_steps}: step {mean['step']:.2f}s | rollout {mean['rollout']:.2f}s | teacher "
          f"{mean['teacher']:.2f}s | update {mean['update']:.2f}s | step/slowest {mean['over_slowest']:.2f} "
          f"({len(timed)} steps after the first)", flush=True)
    return mean


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=2.0, help="seconds the fake API takes to answer each request")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=256, help="student completion length (sets the rollout time)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step is warm-up)")

    from tests.fake_providers import FakeProviderServer

    with FakeProviderServer(latency_s=args.latency) as srv:
        sync = run(0, args, srv.env())
        asyn = run(1, args, srv.env())
    x, y = sync["over_slowest"], asyn["over_slowest"]
    print(f"sync_step_over_slowest={x:.3f} async_step_over_slowest={y:.3f} speedup={sync['step'] / asyn['step']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
