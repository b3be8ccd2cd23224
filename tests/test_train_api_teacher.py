"""`omniopd train --teacher claude-haiku` end to end: tiny student, real anthropic SDK, fake wire server."""

from __future__ import annotations

import json

from omniopd.cli import main
from omniopd.config import build_config
from omniopd.train import run_train
from tests.fake_providers import Fault, fake_server  # noqa: F401  (fixture)
from tests.tiny import tiny_llama


def _point_sdks_at(monkeypatch, srv):
    for k, v in srv.env().items():
        monkeypatch.setenv(k, v)


def test_train_with_claude_haiku_over_the_wire(tmp_path, tiny_tok, monkeypatch, fake_server):
    _point_sdks_at(monkeypatch, fake_server)
    student_dir = tmp_path / "student"
    tiny_llama(tiny_tok, seed=0).save_pretrained(student_dir)
    tiny_tok.save_pretrained(student_dir)
    fake_server.push(Fault("rate_limit", retry_after_ms=50, route="anthropic"))  # retried, not lost
    out = tmp_path / "run"
    rc = main(["train", "--method", "omniopd", "--teacher", "claude-haiku", "--no-fallback", "--student", str(student_dir),
               "--similarity", "edit", "--teacher-samples", "2", "--chunk-tokens", "6", "--chunks-per-completion", "2",
               "--generations", "2", "--max-new-tokens", "20", "--prompts-per-step", "2", "--max-steps", "2",
               "--save-steps", "100", "--teacher-rpm", "6000", "--output", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert sum(r["teacher_samples"] for r in rows) > 0
    assert sum(r.get("teacher_cost_usd", 0.0) for r in rows) > 0
    reqs = fake_server.requests("anthropic")
    assert reqs and all(r.body["model"] == "claude-haiku-4-5" for r in reqs)
    prefills = [r.body["messages"][-1]["content"] for r in reqs if r.body["messages"][-1]["role"] == "assistant"]
    assert prefills and all(p == p.rstrip() for p in prefills)  # prefill, sent without trailing whitespace
    assert any(r.status == 429 for r in reqs)


def test_max_teacher_usd_stops_cleanly_with_a_checkpoint(tmp_path, tiny_tok, monkeypatch, fake_server):
    _point_sdks_at(monkeypatch, fake_server)
    cfg = build_config({
        "method": {"name": "omniopd"},
        "student": {"generations": 2, "max_new_tokens": 20},
        "scheduler": {"chunk_tokens": 6, "chunks_per_completion": 2},
        "teacher": {"spec": "claude-haiku", "samples": 2, "no_fallback": True, "max_usd": 1e-6},
        "scorer": {"similarity": "edit"},
        "learner": {"max_steps": 3, "prompts_per_step": 2},
        "output": {"dir": str(tmp_path / "run"), "save_steps": 100},
    })
    result = run_train(cfg, model=tiny_llama(tiny_tok), tokenizer=tiny_tok, echo=False)
    assert result.stopped_early and "max-teacher-usd" in result.stopped_early
    assert list((tmp_path / "run").glob("checkpoint-*"))
    assert result.teacher_usd <= 1e-6  # the cap holds: no request whose worst case passes it is sent


def test_fallback_is_counted_per_teacher_in_metrics_and_summary(tmp_path, tiny_tok, monkeypatch, fake_server, capsys):
    """A rejected key mid-run switches to the named --fallback-teacher; the run says who wrote what."""
    _point_sdks_at(monkeypatch, fake_server)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-REJECTED")
    fake_server.valid_keys = {"no-key"}
    dirs = {}
    for name, seed in (("student", 0), ("teacher", 1)):
        dirs[name] = tmp_path / name
        tiny_llama(tiny_tok, seed=seed).save_pretrained(dirs[name])
        tiny_tok.save_pretrained(dirs[name])
    out = tmp_path / "run"
    rc = main(["train", "--method", "omniopd", "--teacher", "claude-haiku", "--fallback-teacher", f"local:{dirs['teacher']}",
               "--student", str(dirs["student"]), "--similarity", "edit", "--teacher-samples", "2", "--chunk-tokens", "6",
               "--chunks-per-completion", "2", "--generations", "2", "--max-new-tokens", "20", "--prompts-per-step", "1",
               "--max-steps", "1", "--save-steps", "100", "--cache-mode", "off", "--output", str(out)])
    assert rc == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    by = row["teacher_samples_by_teacher"]
    assert by == {f"local:{dirs['teacher']}": row["teacher_samples_total"]} and row["teacher_samples_total"] > 0
    assert f"from local:{dirs['teacher']}" in capsys.readouterr().out
    assert fake_server.requests("anthropic") and all(r.status == 401 for r in fake_server.requests("anthropic"))


def _tree_hash(path):
    import hashlib

    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


def test_resuming_a_finished_run_does_nothing_and_a_larger_max_steps_continues(tmp_path, tiny_tok, monkeypatch,
                                                                                 fake_server, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="omniopd")
    _point_sdks_at(monkeypatch, fake_server)
    student_dir = tmp_path / "student"
    tiny_llama(tiny_tok, seed=0).save_pretrained(student_dir)
    tiny_tok.save_pretrained(student_dir)
    out = tmp_path / "run"
    argv = ["train", "--method", "omniopd", "--teacher", "claude-haiku", "--no-fallback", "--student", str(student_dir), "--similarity", "edit",
            "--teacher-samples", "2", "--chunk-tokens", "6", "--chunks-per-completion", "2", "--generations", "2",
            "--max-new-tokens", "20", "--prompts-per-step", "1", "--cache-mode", "off", "--teacher-rpm", "6000",
            "--output", str(out)]
    assert main([*argv, "--max-steps", "2"]) == 0
    before = (_tree_hash(out / "final"), (out / "metrics.jsonl").read_text(), (out / "config.yaml").read_text(),
              len(fake_server.requests("anthropic")))
    assert before[3] > 0
    assert main([*argv, "--max-steps", "2", "--resume"]) == 0
    after = (_tree_hash(out / "final"), (out / "metrics.jsonl").read_text(), (out / "config.yaml").read_text(),
             len(fake_server.requests("anthropic")))
    assert after == before  # no step, no teacher request, final/ and the run's files untouched
    assert "already finished at step 2" in caplog.text
    assert main([*argv, "--max-steps", "3", "--resume"]) == 0  # a larger --max-steps continues it
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert len(fake_server.requests("anthropic")) > before[3] and _tree_hash(out / "final") != before[0]
