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

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")

pytestmark = pytest.mark.slow


def _overrides(tmp_path: Path, name: str, **extra) -> dict:
    return {"student.generations": 2, "student.max_new_tokens": 12, "scheduler.chunk_tokens": 4,
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


def test_two_ranks_share_one_spend_cap_and_stop_together(tmp_path):
    """The run's ledger is one file for both ranks: their joint spend stays under the cap, and
    when either rank is refused, both stop at the same step (nobody is left in an all-reduce)."""
    from omniopd.ledger import LEDGER_FILE, SpendLedger
    from tests.fake_providers import FakeProviderServer

    if not TORCHRUN.is_file() and shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed next to this Python")
    cap = 0.02  # both ranks reserve ~$0.015 (worst case) per step and pay ~$0.002: the cap lands after a few steps
    with FakeProviderServer() as srv:
        env = {**os.environ, **srv.env(), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        overrides = _overrides(tmp_path, "run", **{"teacher.spec": "claude-haiku", "teacher.no_fallback": True,
                                                   "teacher.max_usd": cap, "learner.max_steps": 6,
                                                   "teacher.rpm": 60000})
        cmd = [str(TORCHRUN if TORCHRUN.is_file() else shutil.which("torchrun")), "--nproc_per_node", "2",
               "--standalone", str(ROOT / "tests" / "dist_child.py"), json.dumps(overrides)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        requests = len(srv.requests("anthropic"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "run"
    with SpendLedger(run / LEDGER_FILE) as led:
        spent, bought = led.spent, led.samples
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    print(f"2 ranks, cap ${cap}: spent ${spent:.6f} on {bought} samples ({requests} requests); "
          f"stopped at step {rows[-1]['step']}")
    assert 0 < spent <= cap and rows[-1].get("stopped") == "max_teacher_usd"
    assert rows[-1]["step"] < 6 and list(run.glob("checkpoint-*")) and not (run / "final").exists()
