"""A 2-process run (torchrun, gloo on CPU, tiny models): one metrics row per step with values
reduced over both ranks, every rank's rollouts recorded, and --replay seeing all of them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cache.episodes import Replay
from tests.fake_providers import fake_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

pytestmark = pytest.mark.slow


def _overrides(tmp_path: Path, name: str, **extra) -> dict:
    return {"method.name": "omniopd", "student.generations": 2, "student.max_new_tokens": 12, "scheduler.chunk_tokens": 4,
            "scheduler.chunks_per_completion": 2, "teacher.samples": 2, "scorer.similarity": "edit",
            "learner.max_steps": 2, "learner.learning_rate": 5e-3, "learner.prompts_per_step": 2, "learner.seed": 0,
            "output.dir": str(tmp_path / name), "output.save_steps": 100, "cache.path": str(tmp_path / "teacher.sqlite"),
            **extra}


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    if not TORCHRUN.is_file() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed next to this Python")
    tmp_path = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN if TORCHRUN.is_file() else shutil.which("torchrun")), "--nproc_per_node", "2",
           "--standalone", str(ROOT / "tests" / "dist_child.py"), json.dumps(_overrides(tmp_path, "run"))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp_path, out.stdout


def test_one_metrics_row_per_step_reduced_over_both_ranks(two_rank_run):
    tmp_path, stdout = two_rank_run
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    replay = Replay(tmp_path / "run")
    try:
        entries = replay.entries()
        assert entries == [(0, 0), (0, 1), (1, 0), (1, 1)]  # both ranks recorded both steps
        for row, step in zip(rows, (0, 1)):
            eps = [replay.episode(step, rank) for rank in (0, 1)]
            chunks = [c for ep in eps for c in ep["chunks"]]
            # counts are the sum over both ranks, the chunk-weight mean is over both ranks' chunks' means
            assert row["forks"] == len(chunks)
            assert row["teacher_samples"] == sum(len(c["sample_ids"]) for c in chunks)
            means = [sum(c["pihat"] for c in ep["chunks"]) / len(ep["chunks"]) for ep in eps]
            assert row["reward_mean"] == pytest.approx(sum(means) / 2, rel=1e-5)
            # the two ranks trained on different prompts' rollouts, so a lost rank would show
            assert eps[0]["prompt_ids"] != eps[1]["prompt_ids"]
        assert rows[-1]["teacher_samples_total"] == sum(r["teacher_samples"] for r in rows)
    finally:
        replay.close()
    # step lines come from rank 0 only
    assert sum(1 for line in stdout.splitlines() for part in line.split("\r") if part.startswith("step    1 |")) == 1


def test_replay_of_the_two_rank_run_sees_both_ranks(two_rank_run, tiny_tok):
    from omniopd.config import build_config
    from omniopd.train import run_train
    from tests.tiny import tiny_llama

    tmp_path, _ = two_rank_run
    cfg = build_config(None, _overrides(tmp_path, "replayed", **{"learner.max_steps": 8,
                                                                 "cache.replay": str(tmp_path / "run")}))
    result = run_train(cfg, model=tiny_llama(tiny_tok, seed=0), tokenizer=tiny_tok, echo=False)
    assert result.steps == 4  # 2 recorded steps x 2 ranks, dealt to this one process
    rows = [json.loads(x) for x in (tmp_path / "replayed" / "metrics.jsonl").read_text().splitlines()]
    replay = Replay(tmp_path / "run")
    try:
        recorded = [len(replay.episode(s, r)["chunks"]) for s, r in replay.entries()]
    finally:
        replay.close()
    # each replayed step re-audits one recorded (step, rank) episode from its recorded samples
    assert [r["forks"] for r in rows] == recorded
    assert all(r["teacher_samples"] > 0 for r in rows)


def test_teacher_budget_is_global_across_ranks(tmp_path, fake_server):
    """Two ranks buy from one priced API teacher (the fake wire server) under one --max-teacher-usd:
    the run's total spend stays under a cap that one rank alone would cross over the planned steps."""
    from omniopd.ledger import LEDGER_FILE, SpendLedger

    cap, steps = 0.015, 12
    env = {**os.environ, **fake_server.env(), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    over = _overrides(tmp_path, "budget", **{"teacher.spec": "claude-haiku", "teacher.no_fallback": True,
                                             "teacher.rpm": 6000.0, "teacher.max_usd": cap, "learner.max_steps": steps,
                                             "cache.mode": "off"})
    over.pop("cache.path")
    cmd = [str(TORCHRUN if TORCHRUN.is_file() else shutil.which("torchrun")), "--nproc_per_node", "2",
           "--standalone", str(ROOT / "tests" / "dist_child.py"), json.dumps(over)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]  # both ranks stopped cleanly, together
    rows = [json.loads(x) for x in (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()]
    steps_run = [r for r in rows if "stopped" not in r]
    stops = [r for r in rows if "stopped" in r]
    assert len(stops) == 1 and stops[0]["stopped"] == "max_teacher_usd"  # one closing row, from rank 0
    assert 1 <= len(steps_run) < steps
    run = tmp_path / "budget"
    assert list(run.glob("checkpoint-*")) and not (run / "final").exists()  # stopped with a checkpoint, resumable
    ledger = SpendLedger(tmp_path / "budget" / LEDGER_FILE, None)
    try:
        spent = ledger.spent
    finally:
        ledger.close()
    assert 0 < spent <= cap
    # one rank's spend per step (rows hold both ranks' sum): alone, over the planned steps, it would cross the cap
    per_rank_step = sum(r["teacher_cost_usd"] for r in steps_run) / len(steps_run) / 2
    assert per_rank_step * steps > cap
    replay = Replay(tmp_path / "budget")
    try:
        assert {rank for _, rank in replay.entries()} == {0, 1}  # both ranks bought and recorded samples
    finally:
        replay.close()
