"""`omniopd collect --what solutions`: batch and live purchases land in the sample cache under the
keys a live `CachedTeacher.sample(solution_request(...))` reads, under the spend cap, resumably."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache.batch_jobs import JOURNAL_FILE, BatchJournal
from cache.store import SampleStore
from cache.teacher import CachedTeacher, request_key
from omniopd.collect import run_collect
from omniopd.config import CollectConfig, build_config
from omniopd.errors import TeacherAuthError, TeacherError
from omniopd.ledger import LEDGER_FILE, SpendLedger
from omniopd.solutions import solution_request
from omniopd.teachers import build_api_teacher
from tests.fake_batches import FakeBatchServer
from tests.fake_providers import FakeProviderServer

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"anthropic": "anthropic:claude-haiku-4-5", "openai": "openai:gpt-4o-mini", "gemini": "gemini:gemini-2.5-flash"}
QUESTIONS = [f"What is {i} + {i + 2}?" for i in range(6)]
MAX_TOKENS = 16


async def _fast(_: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    return p


def configs(tmp_path: Path, data: Path, spec: str, cap: float | None = None, solutions: int = 1, **collect):
    cfg = build_config(None, {"teacher.spec": spec, "data.path": str(data), "cache.path": str(tmp_path / "cache.sqlite"),
                              "student.max_new_tokens": MAX_TOKENS, "teacher.max_usd": cap, "teacher.max_attempts": 2,
                              "method.teacher_solutions": solutions})
    return cfg, CollectConfig(dir=str(tmp_path / "collect"), poll_s=0.01, **collect)


def pools(tmp_path: Path, cfg, env) -> dict[bytes, int]:
    identity = build_api_teacher(cfg.teacher, env=env).identity()
    keys = [request_key(identity, solution_request([{"role": "user", "content": q}], n=1, max_tokens=MAX_TOKENS))
            for q in QUESTIONS]
    with SampleStore(tmp_path / "cache.sqlite", "read-only") as s:
        found = s.pools(keys)
        return {k: len(found[k]) if k in found else 0 for k in keys}


@pytest.mark.parametrize("provider", list(SPECS))
def test_batch_collect_fills_the_cache_a_live_sample_reads(tmp_path, data, provider):
    with FakeBatchServer(end_after_polls=2) as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS[provider], batch=True, solutions=2)
        lines: list[str] = []
        summary = run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lines.append)
        assert srv.created(provider) == 1 and summary.finished and summary.missing == 0
        assert set(pools(tmp_path, cfg, srv.env()).values()) == {2}
        assert any("submitted" in ln for ln in lines) and any("ended" in ln for ln in lines)
        assert summary.paid_usd > 0 and summary.paid_usd == pytest.approx(summary.live_usd / 2)

        # the path training takes: CachedTeacher over the live teacher, asking for solution_request(...)
        before = len(srv.log)
        teacher = CachedTeacher(build_api_teacher(cfg.teacher, env=srv.env()), tmp_path / "cache.sqlite")

        async def live():
            out = [await teacher.sample(solution_request([{"role": "user", "content": q}], n=2, max_tokens=MAX_TOKENS))
                   for q in QUESTIONS]
            await teacher.aclose()
            return out

        got = asyncio.run(live())
        assert len(srv.log) == before, "a collected solution was requested again"
        assert all(len(g) == 2 and all(s.cached and s.text for s in g) for g in got)

        # a rerun buys nothing and submits nothing
        again = run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lines.append)
        assert srv.created() == 1 and again.wanted == 0


def test_live_collect_buys_only_the_shortfall(tmp_path, data):
    with FakeProviderServer() as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS["openai"], solutions=3)
        cfg4, _ = configs(tmp_path, data, SPECS["openai"], solutions=4)
        summary = run_collect(cfg, ccfg, env=srv.env(), echo=lambda _: None)
        assert summary.missing == 0 and set(pools(tmp_path, cfg, srv.env()).values()) == {3}
        n = len(srv.log)
        assert n == len(QUESTIONS)  # n=3 in one request per prompt
        run_collect(cfg4, ccfg, env=srv.env(), echo=lambda _: None)
        assert set(pools(tmp_path, cfg, srv.env()).values()) == {4}
        assert all(r.body.get("n", 1) == 1 for r in srv.log[n:])
        with SpendLedger(Path(ccfg.dir) / LEDGER_FILE) as ledger:
            assert ledger.samples == 4 * len(QUESTIONS) and ledger.spent > 0


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_cap_below_full_cost_stops_at_or_under_it(tmp_path, data, provider, monkeypatch, capsys):
    from omniopd.cli import main

    with FakeBatchServer() as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS[provider], batch=True, solutions=2)
        dry = run_collect(cfg, CollectConfig(dir=ccfg.dir, batch=True, dry_run=True), env=srv.env())
        full_worst = float(dry.table().split("worst case batched:")[1].split("$")[1].split()[0])
        assert srv.created() == 0 and "estimated cost live" in dry.table()
        cap = full_worst * 0.45
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        # omniopd collect --what solutions --batch --max-teacher-usd C, with C below the full cost
        rc = main(["collect", "--what", "solutions", "--batch", "--max-teacher-usd", repr(cap), "--teacher", SPECS[provider],
                   "--data", str(data), "--cache", str(tmp_path / "cache.sqlite"), "--max-new-tokens", str(MAX_TOKENS),
                   "--teacher-solutions", "2", "--collect-dir", ccfg.dir, "--poll-seconds", "0.01"])
        out = capsys.readouterr().out
        assert rc == 3 and "would pass --max-teacher-usd" in out and "by $" in out
        with SpendLedger(Path(ccfg.dir) / LEDGER_FILE, cap) as ledger:
            assert 0 < ledger.spent <= cap and ledger.in_flight == pytest.approx(0, abs=1e-12)
        stored = sum(pools(tmp_path, cfg, srv.env()).values())
        assert 0 < stored < 2 * len(QUESTIONS)


def test_errored_items_are_bought_again_in_a_new_batch(tmp_path, data):
    failed_once: set[str] = set()

    def outcome(provider: str, cid: str) -> str:
        if len(failed_once) < 2 and cid not in failed_once and cid in ("i1", "i4"):
            failed_once.add(cid)
            return "error"
        return "ok"

    with FakeBatchServer(outcome=outcome) as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS["openai"], batch=True, solutions=2)
        lines: list[str] = []
        summary = run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lines.append)
    assert srv.created() == 2 and summary.missing == 0
    assert any("errored" in ln and "request" in ln for ln in lines)
    assert set(pools(tmp_path, cfg, srv.env()).values()) == {2}
    assert sorted(r.failed for r in summary.rows) == [0, 2]


def test_expired_batch_is_reported_with_its_cost_and_retried(tmp_path, data):
    with FakeBatchServer(expire_batches=True) as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS["gemini"], batch=True, retries=1)
        summary = run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lambda _: None)
    assert srv.created() == 2 and summary.missing == len(QUESTIONS)
    assert all(r.state == "expired" and r.paid_usd == 0 and r.failed == len(QUESTIONS) for r in summary.rows)
    assert "expired" in summary.table()


def test_a_missing_key_stops_before_anything_is_submitted(tmp_path, data):
    with FakeBatchServer() as srv:
        env = {k: v for k, v in srv.env().items() if k != "ANTHROPIC_API_KEY"}
        cfg, ccfg = configs(tmp_path, data, SPECS["anthropic"], batch=True)
        with pytest.raises(TeacherAuthError):
            run_collect(cfg, ccfg, env=env)
        assert srv.created() == 0


def _collect_cmd(tmp_path: Path, data: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; from omniopd.cli import main; sys.exit(main(sys.argv[1:]))", "collect",
            "--teacher", SPECS["anthropic"], "--data", str(data), "--cache", str(tmp_path / "cache.sqlite"),
            "--max-new-tokens", str(MAX_TOKENS), "--batch", "--teacher-solutions", "2", "--batch-items", "5",
            "--collect-dir", str(tmp_path / "collect"), "--poll-seconds", "0.05", "--max-teacher-usd", "1"]


def test_kill_9_while_polling_then_rerun_pays_and_stores_each_batch_once(tmp_path, data):
    with FakeBatchServer(hold=True) as srv:
        env = {**os.environ, **srv.env(), "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(_collect_cmd(tmp_path, data), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while not (srv.created() == 3 and len(srv.requests("GET", r"/v1/messages/batches/")) >= 6):
                assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
                assert time.time() < deadline, "the collect process never polled"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        with BatchJournal(tmp_path / "collect" / JOURNAL_FILE) as j:
            assert [job.state for job in j.jobs()] == ["submitted"] * 3
        srv.release()
        done = subprocess.run(_collect_cmd(tmp_path, data), env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert srv.created() == 3  # each batch created once: the rerun polled, never resubmitted
        cfg, _ = configs(tmp_path, data, SPECS["anthropic"])
        assert set(pools(tmp_path, cfg, srv.env()).values()) == {2}  # every item stored once
        with SampleStore(tmp_path / "cache.sqlite", "read-only") as s:
            assert s.stats()["samples"] == 2 * len(QUESTIONS)
        with BatchJournal(tmp_path / "collect" / JOURNAL_FILE) as j:
            jobs = j.jobs()
        with SpendLedger(tmp_path / "collect" / LEDGER_FILE, 1.0) as ledger:
            assert ledger.in_flight == pytest.approx(0, abs=1e-12) and ledger.samples == 2 * len(QUESTIONS)
            assert ledger.spent == pytest.approx(sum(job.paid_usd for job in jobs))  # each batch charged once
            rows = ledger.conn.execute("SELECT state, count(*) FROM reservations GROUP BY state").fetchall()
        assert dict(rows) == {"settled": 3}
        assert "USD paid" in done.stdout and "sk-ant-test" not in done.stdout + done.stderr


def test_live_fallback_buys_errored_items_live(tmp_path, data):
    with FakeProviderServer() as live, FakeBatchServer(live=live, outcome=lambda p, cid: "error" if cid == "i2" else "ok") as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS["anthropic"], batch=True, live_fallback=True)
        summary = run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lambda _: None)
        assert srv.created() == 1 and len(live.log) == 1  # one errored item, bought live
        assert summary.missing == 0 and set(pools(tmp_path, cfg, srv.env()).values()) == {1}
        assert [r.name for r in summary.rows][-1] == "live" and summary.rows[-1].stored == 1
        with SpendLedger(Path(ccfg.dir) / LEDGER_FILE) as ledger:
            assert ledger.samples == len(QUESTIONS)
            assert ledger.spent == pytest.approx(summary.paid_usd)


@pytest.mark.parametrize("provider", list(SPECS))
def test_a_run_killed_inside_create_is_found_at_the_provider_not_resubmitted(tmp_path, data, provider, monkeypatch):
    import importlib

    cls = {"anthropic": "AnthropicBatchClient", "openai": "OpenAIBatchClient", "gemini": "GeminiBatchClient"}[provider]
    cls = getattr(importlib.import_module(f"providers.{provider}_batch"), cls)
    orig = cls.create

    async def dies_after_create(self, items, tag):
        await orig(self, items, tag)
        raise KeyboardInterrupt  # killed before the batch id reached the journal

    with FakeBatchServer() as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS[provider], batch=True)
        monkeypatch.setattr(cls, "create", dies_after_create)
        with pytest.raises(KeyboardInterrupt):
            run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lambda _: None)
        monkeypatch.setattr(cls, "create", orig)
        with BatchJournal(Path(ccfg.dir) / JOURNAL_FILE) as j:
            assert [job.state for job in j.jobs()] == ["submitting"]
        lines: list[str] = []
        summary = run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lines.append)
        assert srv.created() == 1 and summary.missing == 0
        assert any("found at the provider" in ln for ln in lines)
        with SpendLedger(Path(ccfg.dir) / LEDGER_FILE) as ledger:
            assert ledger.spent == pytest.approx(summary.paid_usd) and ledger.samples == len(QUESTIONS)


def test_submit_and_return_then_cancel_reports_what_the_batch_cost(tmp_path, data):
    with FakeBatchServer(hold=True) as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS["anthropic"], batch=True, max_wait_s=0)
        first = run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lambda _: None)
        assert not first.finished and srv.created() == 1
        assert "rerun to collect" in first.table()
        cancel = CollectConfig(dir=ccfg.dir, batch=True, cancel=True, poll_s=0.01)
        lines: list[str] = []
        summary = run_collect(cfg, cancel, env=srv.env(), sleep=_fast, echo=lines.append)
    assert srv.created() == 1 and srv.requests("POST", r"/cancel$")
    assert any("cancel requested" in ln for ln in lines)
    assert [(r.state, r.stored, r.failed, r.paid_usd) for r in summary.rows] == [("canceled", 0, len(QUESTIONS), 0.0)]
    with SpendLedger(Path(ccfg.dir) / LEDGER_FILE) as ledger:
        assert ledger.spent == 0 and ledger.in_flight == pytest.approx(0, abs=1e-12)


def test_cli_dry_run_prints_live_and_batched_cost_and_buys_nothing(tmp_path, data, capsys, monkeypatch):
    from omniopd.cli import main

    with FakeBatchServer() as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        rc = main(["collect", "--teacher", "gpt-4o-mini", "--data", str(data), "--cache", str(tmp_path / "c.sqlite"),
                   "--batch", "--teacher-solutions", "3", "--dry-run", "--collect-dir", str(tmp_path / "collect")])
        out = capsys.readouterr().out
        assert rc == 0 and srv.created() == 0 and not srv.log
    assert "estimated cost live" in out and "estimated cost batched" in out and f"{3 * len(QUESTIONS)} samples" in out
    live = float(out.split("estimated cost live:")[1].split("$")[1].split()[0])
    batched = float(out.split("estimated cost batched:")[1].split("$")[1].split()[0])
    assert batched == pytest.approx(live / 2, rel=1e-3)


def test_a_second_collect_on_the_same_directory_stops_at_once(tmp_path, data):
    from omniopd.errors import CacheError

    with FakeBatchServer() as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS["openai"], batch=True)
        with BatchJournal(Path(ccfg.dir) / JOURNAL_FILE, exclusive=True):  # another collect holds it
            with pytest.raises(CacheError, match="another `omniopd collect`"):
                run_collect(cfg, ccfg, env=srv.env())
        assert srv.created() == 0
        assert run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lambda _: None).missing == 0


def test_a_teacher_without_a_batch_api_stops_before_anything_is_sent(tmp_path, data):
    from omniopd.errors import TeacherCapabilityError

    with FakeBatchServer() as srv:
        cfg = build_config(None, {"teacher.spec": "openai-compatible:m", "teacher.base_url": srv.url + "/v1",
                                  "data.path": str(data), "cache.path": str(tmp_path / "cache.sqlite")})
        with pytest.raises(TeacherCapabilityError, match="no batch API"):
            run_collect(cfg, CollectConfig(dir=str(tmp_path / "collect"), batch=True), env=srv.env())
        assert not srv.log


def test_config_file_collect_section(tmp_path, data, capsys, monkeypatch):
    import yaml

    from omniopd.cli import main

    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"teacher": {"spec": SPECS["gemini"]}, "data": {"path": str(data)},
                                    "method": {"teacher_solutions": 5}, "collect": {"batch": True, "dry_run": True}}))
    with FakeBatchServer() as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        rc = main(["collect", "--config", str(conf), "--teacher-solutions", "3", "--cache", str(tmp_path / "c.sqlite"),
                   "--collect-dir", str(tmp_path / "collect")])
    out = capsys.readouterr().out
    assert rc == 0 and "3 solutions each" in out and "dry run" in out  # flag > file > default


@pytest.mark.parametrize("provider", list(SPECS))
def test_api_keys_are_never_logged_or_stored(tmp_path, data, provider, caplog):
    import logging

    canary = f"canary-{provider}-key-5e1f"
    with FakeBatchServer(outcome=lambda p, cid: "error" if cid == "i0" else "ok") as srv:
        env = {**srv.env(), "ANTHROPIC_API_KEY": canary, "OPENAI_API_KEY": canary, "GEMINI_API_KEY": canary}
        cfg, ccfg = configs(tmp_path, data, SPECS[provider], batch=True, retries=0)
        lines: list[str] = []
        with caplog.at_level(logging.DEBUG):
            run_collect(cfg, ccfg, env=env, sleep=_fast, echo=lines.append)
            with pytest.raises(TeacherError) as ei:  # an error message names the batch, never the key
                from providers.batch_base import batch_client_for

                asyncio.run(batch_client_for(build_api_teacher(cfg.teacher, env=env)).status("batches/x" if provider == "gemini" else "x"))
    assert canary not in str(ei.value)
    assert canary not in "\n".join(lines) + caplog.text
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert canary.encode() not in f.read_bytes(), f


@pytest.mark.parametrize("provider", list(SPECS))
@pytest.mark.parametrize("faults", [["error"], ["lost"], ["error", "lost"]])
def test_a_failed_create_is_retried_only_if_the_provider_has_no_such_batch(tmp_path, data, provider, faults):
    with FakeBatchServer(create_faults=faults) as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS[provider], batch=True)
        summary = run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lambda _: None)
        assert srv.created() == 1 and summary.missing == 0  # never created (nor paid for) twice
        assert len(srv.requests("POST", r"batches$|batchGenerateContent$")) == 1 + faults.count("error")
    with SpendLedger(Path(ccfg.dir) / LEDGER_FILE) as ledger:
        assert ledger.samples == len(QUESTIONS) and ledger.spent == pytest.approx(summary.paid_usd)


def test_progress_line_has_the_providers_counts_and_an_eta(tmp_path):
    from cache.batch_jobs import Job
    from omniopd.collect_batches import BatchCollector
    from providers.batch_base import BatchStatus

    lines: list[str] = []
    c = BatchCollector(client=None, journal=None, ledger=None, store=None, clock=lambda: 1000.0,  # type: ignore[arg-type]
                       echo=lines.append)
    job = Job("j", "openai", "openai:gpt-4o-mini", "batch_1", "submitted", 1, 0.1, 400.0, "", {}, 0, 0, 0, 0)
    c._progress(job, BatchStatus("batch_1", "in_progress", "in_progress", done=30, total=120))
    c._progress(job, BatchStatus("batch_1", "in_progress", "in_progress", done=30, total=120))  # unchanged: no line
    assert lines == ["batch batch_1: in_progress 30/120, ETA 30 min"]  # 600 s for 30, so 1800 s for 90 more


def test_batches_are_split_to_the_providers_size_limit(tmp_path, data, monkeypatch):
    from providers.openai_batch import OpenAIBatchClient

    monkeypatch.setattr(OpenAIBatchClient, "max_bytes", 2_000)  # about two of these requests per batch
    with FakeBatchServer() as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS["openai"], batch=True)
        summary = run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lambda _: None)
        sizes = sorted(len(b.items) for b in srv.batches.values())
    assert summary.missing == 0 and sum(sizes) == len(QUESTIONS) and len(sizes) >= 3 and max(sizes) <= 3


@pytest.mark.parametrize("provider", list(SPECS))
def test_a_rejected_key_stops_before_anything_is_submitted_or_reserved(tmp_path, data, provider):
    with FakeBatchServer(valid_keys={"the-right-key"}) as srv:
        cfg, ccfg = configs(tmp_path, data, SPECS[provider], batch=True)
        with pytest.raises(TeacherAuthError) as ei:
            run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lambda _: None)
        assert srv.created() == 0 and ei.value.provider == provider and ei.value.status == 401
    with BatchJournal(Path(ccfg.dir) / JOURNAL_FILE) as j, SpendLedger(Path(ccfg.dir) / LEDGER_FILE) as ledger:
        assert j.jobs() == [] and ledger.in_flight == 0 and ledger.spent == 0
