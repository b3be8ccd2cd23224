"""Where a training step's time goes, for the demo configuration.

    python bench/step_profile.py [--steps 3] [--config omniopd/data/demo.yaml] [--async-steps 0]

Runs the real `omniopd train` path (packaged SmolLM2 student and local teacher, MiniLM
similarity) and splits each step's wall time into rollout, scheduler, teacher, scorer and
update (the TRL forward/backward/optimizer: the step total minus the other four), from the
per-step timings in metrics.jsonl. Shares are ratios against the step total measured in the
same run. Targets from the issue: scheduler < 1 %, scorer < 10 % of the step.

"teacher" is the time the trainer waited for the teacher (the audit's wall time less the
scheduler and scorer): with `--async-steps 0` that is all of the teacher's answering time;
with `--async-steps 1` only what was not hidden behind sampling and the update (the line
under the table gives the teacher's own answering time per step, hidden or not).
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

PHASES = ("rollout", "scheduler", "teacher", "scorer", "update")
TARGETS = {"scheduler": 0.01, "scorer": 0.10}


def phase_seconds(row: dict) -> dict[str, float]:
    parts = {
        "rollout": row["rollout_seconds"],
        "scheduler": row["scheduler_seconds"],
        "scorer": row["scorer_seconds"],
    }
    if "audit_seconds" in row:  # the trainer's own clock around the audit
        parts["teacher"] = max(0.0, row["audit_seconds"] - parts["scheduler"] - parts["scorer"])
    else:  # runs from before the audit was timed by the learner
        parts["teacher"] = row["teacher_seconds"]
    parts["update"] = max(0.0, row["step_time"] - sum(parts.values()))
    return {k: parts[k] for k in PHASES}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "omniopd" / "data" / "demo.yaml"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--async-steps", type=int, default=0, help="learner.async_steps for the run (0: on-policy order)")
    args = ap.parse_args()

    from omniopd.config import build_config, load_config_file
    from omniopd.train import run_train

    with tempfile.TemporaryDirectory() as tmp:
        # cache off: a teacher sample served from an earlier run's cache would time the cache, not the teacher
        cfg = build_config(load_config_file(args.config), {"learner.max_steps": args.steps, "output.dir": tmp + "/run",
                                                           "output.save_steps": 10_000, "cache.mode": "off",
                                                           "learner.async_steps": args.async_steps})
        run_train(cfg, echo=False)
        rows = [json.loads(x) for x in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]

    totals = dict.fromkeys(PHASES, 0.0)
    for r in rows:
        for k, v in phase_seconds(r).items():
            totals[k] += v
    step_total = sum(totals.values())
    print(f"step profile: {len(rows)} steps of the demo configuration ({args.config}), --async-steps {args.async_steps}")
    print(f"{'phase':<10} {'s/step':>8} {'share':>8}  target")
    ok = True
    for k in PHASES:
        share = totals[k] / step_total
        target = TARGETS.get(k)
        verdict = "" if target is None else (f"< {target:.0%}  " + ("ok" if share < target else "MISSED"))
        ok &= target is None or share < target
        print(f"{k:<10} {totals[k] / len(rows):>8.3f} {share:>8.2%}  {verdict}")
    print(f"{'total':<10} {step_total / len(rows):>8.3f} {1:>8.0%}")
    answering = sum(r["teacher_seconds"] for r in rows) / len(rows)
    print(f"teacher answering {answering:.3f} s/step, of which the trainer waited {totals['teacher'] / len(rows):.3f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
