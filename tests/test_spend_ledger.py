"""The spend cap holds: reservations before requests, real costs after, across processes and resumes."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import pickle
import subprocess
import sys

import pytest

from cache.store import SampleStore
from omniopd.config import build_config
from omniopd.errors import BudgetExceededError
from omniopd.ledger import LEDGER_FILE, SpendLedger, process_token
from omniopd.spend import BudgetedTeacher
from omniopd.teachers import build_api_teacher
from omniopd.train import run_train
from providers.base import Message, TeacherRequest
from tests.fake_providers import fake_server  # noqa: F401  (fixture)
from tests.tiny import tiny_llama


def test_reserve_settle_release_and_the_cap(tmp_path):
    with SpendLedger(tmp_path / LEDGER_FILE, cap_usd=1.0) as led:
        a = led.reserve(0.6)
        with pytest.raises(BudgetExceededError) as err:
            led.reserve(0.5)  # 0.6 in flight + 0.5 > 1.0
        assert err.value.cap_usd == 1.0 and err.value.needed_usd == 0.5 and err.value.spent_usd == pytest.approx(0.6)
        led.settle(a, 0.2, samples=3)
        b = led.reserve(0.5)  # 0.2 spent + 0.5
        led.release(b)
        assert led.spent == pytest.approx(0.2) and led.in_flight == 0 and led.samples == 3
        c = led.reserve(0.8)  # exactly the cap: allowed
        led.settle(c, 0.8)
        with pytest.raises(BudgetExceededError):
            led.reserve(1e-9)
    with SpendLedger(tmp_path / LEDGER_FILE, cap_usd=2.0) as led:  # a resumed run with a raised cap
        assert led.spent == pytest.approx(1.0)
        led.reserve(1.0)


def test_a_dead_process_reservation_counts_at_its_worst_case(tmp_path):
    path = tmp_path / LEDGER_FILE
    proc = subprocess.run([sys.executable, "-c", "import sys, os; from omniopd.ledger import SpendLedger; "
                           "l = SpendLedger(sys.argv[1], 1.0); l.reserve(0.3); os._exit(0)", str(path)],
                          env={**os.environ, "PYTHONPATH": os.getcwd()}, check=True)
    assert proc.returncode == 0
    with SpendLedger(path, 1.0) as led:  # the owner is gone: its open request may have been billed
        assert led.spent == pytest.approx(0.3) and led.in_flight == 0
    live = SpendLedger(path, 1.0, owner=process_token())
    live.reserve(0.1)
    with SpendLedger(path, 1.0) as other:  # a live owner's reservation stays in flight
        assert other.in_flight == pytest.approx(0.1)
    live.close()


def _hammer(path: str, n: int, q) -> None:
    led = SpendLedger(path, cap_usd=1.0)
    got = 0
    for _ in range(n):
        try:
            rid = led.reserve(0.01)
        except BudgetExceededError:
            continue
        led.settle(rid, 0.01, 1)
        got += 1
    led.close()
    q.put(got)


def test_four_processes_never_cross_the_cap(tmp_path):
    path = str(tmp_path / LEDGER_FILE)
    SpendLedger(path, 1.0).close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(path, 60, q)) for _ in range(4)]  # 240 asks, room for 100
    for p in procs:
        p.start()
    got = sum(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    with SpendLedger(path, 1.0) as led:
        print(f"4 processes: {got} reservations granted, spent ${led.spent:.4f} of a $1.00 cap")
        assert got == 100 and led.spent == pytest.approx(1.0) and led.samples == 100


def test_budget_error_pickles_with_its_facts():
    e = BudgetExceededError("stop", spent_usd=1.0, cap_usd=2.0, needed_usd=3.0, provider="anthropic")
    back = pickle.loads(pickle.dumps(e))
    assert (back.spent_usd, back.cap_usd, back.needed_usd, back.provider, str(back)) == (1.0, 2.0, 3.0, "anthropic", "stop")


def _request(n: int = 3) -> TeacherRequest:
    return TeacherRequest((Message("user", "What is 17 * 23? Think step by step."),), "17 * 23 = 17 * 20 + 17 * 3", n, 16)


@pytest.mark.parametrize("spec", ["anthropic:claude-haiku-4-5", "openai:gpt-4o-mini", "gemini:gemini-2.5-flash"])
def test_worst_case_bounds_the_bill_on_every_api(spec, tmp_path, fake_server):
    cfg = build_config({"teacher": {"spec": spec, "no_fallback": True}}).teacher
    teacher = build_api_teacher(cfg, env=fake_server.env())
    led = SpendLedger(tmp_path / LEDGER_FILE)
    wrapped = BudgetedTeacher(teacher, led)
    req = _request()
    worst = teacher.worst_case_usd(req)

    async def go():
        try:
            return await wrapped.sample(req)
        finally:
            await wrapped.aclose()

    samples = asyncio.run(go())
    billed = sum(s.cost_usd for s in samples)
    print(f"{spec}: worst case ${worst:.7f}, billed ${billed:.7f}")
    assert 0 < billed <= worst and led.spent == pytest.approx(billed) and led.samples == len(samples)


def test_a_request_over_the_headroom_is_never_sent(tmp_path, fake_server):
    cfg = build_config({"teacher": {"spec": "claude-haiku", "no_fallback": True}}).teacher
    teacher = build_api_teacher(cfg, env=fake_server.env())
    led = SpendLedger(tmp_path / LEDGER_FILE, cap_usd=teacher.worst_case_usd(_request()) * 0.99)
    with pytest.raises(BudgetExceededError):
        asyncio.run(BudgetedTeacher(teacher, led).sample(_request()))
    assert fake_server.requests() == [] and led.spent == 0


def _train_cfg(out, cap, resume):
    return build_config({
        "method": {"name": "omniopd"},
        "student": {"generations": 2, "max_new_tokens": 20},
        "scheduler": {"chunk_tokens": 6, "chunks_per_completion": 2},
        "teacher": {"spec": "claude-haiku", "samples": 2, "no_fallback": True, "max_usd": cap},
        "scorer": {"similarity": "edit"},
        "learner": {"max_steps": 3, "prompts_per_step": 2},
        "cache": {"path": str(out.parent / "cache.sqlite")},
        "output": {"dir": str(out), "save_steps": 100, "resume": resume},
    })


def test_spend_cap_holds_across_two_resumes(tmp_path, tiny_tok, monkeypatch, fake_server):
    """Must-show: a cap below one step's cost, then --resume twice; spend never passes it."""
    for k, v in fake_server.env().items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "run"
    cap = 0.0012  # one step here costs ~$0.0016 (8 requests x 2 samples on claude-haiku)
    figures = []
    for attempt in range(3):
        result = run_train(_train_cfg(out, cap, resume=attempt > 0), model=tiny_llama(tiny_tok), tokenizer=tiny_tok,
                           echo=False)
        assert result.stopped_early and "max-teacher-usd" in result.stopped_early
        assert list(out.glob("checkpoint-*"))  # a checkpoint every time
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        with SampleStore(tmp_path / "cache.sqlite", "read-only") as store:
            cache_usd = store.stats()["cost_usd"]
        with SpendLedger(out / LEDGER_FILE) as led:
            ledger_usd = led.spent
        metrics_usd = max(r["teacher_cost_usd_total"] for r in rows)
        figures.append((attempt, ledger_usd, cache_usd, metrics_usd, len(fake_server.requests("anthropic"))))
        assert rows[-1]["stopped"] == "max_teacher_usd"
        assert cache_usd <= cap + 1e-12 and metrics_usd <= cap + 1e-12 and ledger_usd <= cap + 1e-12
        assert cache_usd <= ledger_usd + 1e-12  # the ledger also holds requests billed but not stored
    for attempt, led_usd, cache_usd, met_usd, reqs in figures:
        print(f"run {attempt}: ledger ${led_usd:.6f}, cache ${cache_usd:.6f}, metrics.jsonl ${met_usd:.6f} "
              f"(cap ${cap}), {reqs} requests so far")
    assert figures[0][1] > 0  # the cap let some requests through
    assert [f[1] for f in figures] == sorted(f[1] for f in figures)  # totals continue, never restart at 0
