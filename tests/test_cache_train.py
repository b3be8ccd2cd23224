"""End to end: training through the cache against a real HTTP teacher, offline replay, resume.

Replay: the real Anthropic client (`--teacher claude-haiku`) against the fake provider server
(`tests/fake_providers.py`). Kill-and-resume: the real `openai` SDK against a small
`/v1/completions` server that can be told to hold requests (`tests/openai_wire.py`), so the
run is killed with teacher requests in flight. Students and tokenizers are tiny, in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cache.episodes import load_episodes
from cache.store import SampleStore
from omniopd.config import build_config
from omniopd.errors import ReplayError
from omniopd.memory import CPU_MICROBATCH_TOKENS
from omniopd.train import run_train
from omniopd import teachers as registry
from tests.fake_providers import FakeProviderServer
from tests.openai_wire import FakeCompletionsServer
from tests.tiny import tiny_llama

ROOT = Path(__file__).resolve().parents[1]


def cfg_for(tmp_path, out: str, max_steps: int = 2, chunk_tokens: int = 6, **cache):
    return build_config({
        "method": {"name": "omniopd"},
        "student": {"generations": 2, "max_new_tokens": 24},
        "teacher": {"spec": "claude-haiku", "samples": 3, "no_fallback": True, "rpm": 6000},
        "scheduler": {"chunk_tokens": chunk_tokens, "chunks_per_completion": 2},
        "scorer": {"similarity": "edit"},
        "learner": {"max_steps": max_steps, "learning_rate": 5e-3, "prompts_per_step": 2, "seed": 0},
        "output": {"dir": str(tmp_path / out), "save_steps": 100},
        "cache": {"path": str(tmp_path / "teacher.sqlite"), **cache},
    })


def chunk_ids(episodes: dict) -> dict:
    return {step: [c["sample_ids"] for c in ep["chunks"]] for step, ep in episodes.items()}


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_steps_then_offline_replay_with_the_server_stopped(tmp_path, tiny_tok, monkeypatch):
    with FakeProviderServer() as server:  # the real anthropic SDK, through the real provider client
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        run_train(cfg_for(tmp_path, "run"), model=tiny_llama(tiny_tok, seed=0), tokenizer=tiny_tok, echo=False)
    answered = [r for r in server.log if r.status == 200]
    assert answered and all(r.route == "anthropic" for r in answered)

    def no_provider(*a, **k):
        raise AssertionError("replay constructed a teacher")

    monkeypatch.setattr(registry, "build_teacher", no_provider)
    bought = len(server.log)
    assert bought > 0
    recorded = dict(load_episodes(tmp_path / "run"))
    assert sorted(recorded) == [0, 1]
    recorded_ids = {i for step in chunk_ids(recorded).values() for ids in step for i in ids}
    assert len(recorded_ids) >= 3

    # The server is stopped. Replay retrains a fresh student from the recorded episodes alone.
    student = tiny_llama(tiny_tok, seed=0)
    before = [p.detach().clone() for p in student.parameters()]
    result = run_train(cfg_for(tmp_path, "replayed", max_steps=5, replay=str(tmp_path / "run")), model=student,
                       tokenizer=tiny_tok, echo=False)
    assert len(server.log) == bought  # the stopped server saw not one request while replaying
    assert result.steps == 2 and result.teacher_usd == 0.0
    # config.yaml records what the run used: the replay's 2 steps (not the 5 asked), the resolved budget
    used = yaml.safe_load((tmp_path / "replayed" / "config.yaml").read_text())["learner"]
    assert used["max_steps"] == 2 and used["max_tokens_per_microbatch"] == CPU_MICROBATCH_TOKENS
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))  # it learned
    replayed = dict(load_episodes(tmp_path / "replayed"))
    for step, ep in recorded.items():
        assert replayed[step]["completion_ids"] == ep["completion_ids"]
        assert replayed[step]["behaviour_logprobs"] == ep["behaviour_logprobs"]
    assert chunk_ids(replayed) == chunk_ids(recorded)  # the very samples the run bought
    assert all(m.get("replay_missed_forks", 0) == 0 for m in metrics(tmp_path / "replayed"))

    # Different fork settings ask for samples that were never bought: skipped and counted ...
    run_train(cfg_for(tmp_path, "other", max_steps=1, chunk_tokens=5, replay=str(tmp_path / "run")), model=tiny_llama(tiny_tok, seed=0),
              tokenizer=tiny_tok, echo=False)
    assert metrics(tmp_path / "other")[-1]["replay_missed_forks"] > 0
    # ... or, with --strict-replay, the run stops and says why.
    with pytest.raises(ReplayError, match="--strict-replay: no stored teacher sample"):
        run_train(cfg_for(tmp_path, "strict", max_steps=1, chunk_tokens=5, replay=str(tmp_path / "run"), strict_replay=True),
                  model=tiny_llama(tiny_tok, seed=0), tokenizer=tiny_tok, echo=False)
    with SampleStore(tmp_path / "teacher.sqlite", "read-only") as store:
        assert store.stats()["samples"] == len(recorded_ids)


@pytest.mark.slow
def test_a_run_killed_mid_step_resumes_without_repeating_a_teacher_request(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "teacher.sqlite"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def child(url: str, resume: bool, hang_at: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(ROOT / "tests" / "cache_resume_child.py"), str(out), str(cache), url,
                                 "1" if resume else "0", str(hang_at)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def stored() -> int:
        if not cache.exists():
            return 0
        with SampleStore(cache, "read-only") as store:
            return store.stats()["samples"]

    with FakeCompletionsServer() as server:
        first = child(server.url, resume=False, hang_at=1)
        deadline = time.monotonic() + 300
        # mid step 2: step 1 checkpointed, one step-2 request answered and stored, others held in flight
        while not (server.hanging and (out / "checkpoint-1").is_dir() and stored() == 3 * len(server.answered)):
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "the run never reached the middle of step 2"
            time.sleep(0.1)
        first.kill()  # SIGKILL: no cleanup, no flush
        first.wait()
        before_kill = [body["prompt"] for body in server.answered]
        assert len(before_kill) >= 2
        with SampleStore(cache, "read-only") as store:
            bought_before_kill = {e.uid.hex() for e in store.iter_entries()}
        server.hang_after = None

        second = child(server.url, resume=True, hang_at=0)
        log, _ = second.communicate(timeout=300)
        assert second.returncode == 0 and "STEPS 2" in log, log

    prompts = [body["prompt"] for body in server.answered]
    assert len(prompts) > len(before_kill)  # the resumed run did finish step 2 ...
    assert len(prompts) == len(set(prompts))  # ... and no request was ever answered twice
    with SampleStore(cache, "read-only") as store:
        s = store.stats()
        assert store.verify() == []
    assert s["samples"] == 3 * len(prompts)
    # the resumed step 2 re-sampled the same forks: the one bought before the kill came from the cache
    assert s["from_cache"] >= 3
    resumed_step2 = {cid for c in dict(load_episodes(out))[1]["chunks"] for cid in c["sample_ids"]}
    assert resumed_step2 & bought_before_kill
