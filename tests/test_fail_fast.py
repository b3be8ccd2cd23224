"""`omniopd train` fails fast: before any model loads, with a message that says what to do, writing nothing.

Each case runs the real console entry point in a subprocess (a fresh interpreter, so an
import of torch or a model load would show up as time and as files), and checks the exit
code, the message, and that the output directory was not created. No wall-clock asserts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omniopd.config import build_config
from omniopd.errors import TeacherAuthError
from omniopd.preflight import check_teacher, preflight

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY")


def omniopd(*argv: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env.update({"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "omniopd.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=120)


def test_missing_api_key_is_an_error_naming_the_variable(tmp_path):
    out = tmp_path / "run"
    r = omniopd("train", "--teacher", "claude-haiku", "--output", str(out))
    assert r.returncode == 2
    assert "ANTHROPIC_API_KEY" in r.stderr and "--fallback-teacher" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    r = omniopd("train", "--teacher", "gemini-flash", "--output", str(out))
    assert r.returncode == 2 and "GOOGLE_API_KEY or GEMINI_API_KEY" in r.stderr and not out.exists()


def test_teacher_typo_gets_a_suggestion_before_any_model_loads(tmp_path):
    out = tmp_path / "run"
    r = omniopd("train", "--teacher", "gpt5", "--output", str(out))
    assert r.returncode == 2 and "did you mean openai:gpt-5?" in r.stderr and not out.exists()
    r = omniopd("train", "--teacher", "claude-haku", "--output", str(out))
    assert r.returncode == 2 and "did you mean claude-haiku?" in r.stderr
    r = omniopd("train", "--teacher", "local:/nonexistent/model", "--output", str(out))
    assert r.returncode == 2 and "/nonexistent/model" in r.stderr and not out.exists()


def test_flag_prefixes_are_rejected_with_a_suggestion(tmp_path):
    out = tmp_path / "run"
    r = omniopd("train", "--max-step", "2", "--output", str(out))
    assert r.returncode == 2 and "--max-step" in r.stderr and "did you mean --max-steps?" in r.stderr
    assert not out.exists()
    r = omniopd("eval", "--model", "smollm2", "--data", "demo", "--limt", "3")
    assert r.returncode == 2 and "did you mean --limit?" in r.stderr


def test_report_to_backend_must_be_installed_and_known(tmp_path):
    out = tmp_path / "run"
    r = omniopd("train", "--report-to", "tensorbord", "--output", str(out))
    assert r.returncode == 2 and "did you mean tensorboard?" in r.stderr and not out.exists()
    missing = next((b for b in ("wandb", "mlflow", "trackio", "clearml") if importlib.util.find_spec(b) is None), None)
    if missing is None:
        pytest.skip("every candidate backend is installed here")
    r = omniopd("train", "--report-to", f"none,{missing}", "--output", str(out))
    assert r.returncode == 2 and f"pip install {missing}" in r.stderr and not out.exists()


def test_unreadable_data_fails_naming_the_line_before_the_student_loads(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": "1+1?"}) + "\n" + "{oops\n")
    out = tmp_path / "run"
    r = omniopd("train", "--data", str(data), "--output", str(out))
    assert r.returncode == 2 and f"{data}:2: not valid JSON" in r.stderr and not out.exists()
    assert "loading student" not in r.stderr


def test_an_existing_run_is_not_overwritten_and_is_left_as_it_was(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "config.yaml").write_text("old: config\n")
    r = omniopd("train", "--output", str(out))
    assert r.returncode == 2 and "--resume" in r.stderr
    assert (out / "config.yaml").read_text() == "old: config\n" and sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "metrics.jsonl"]


def test_a_named_fallback_teacher_allows_a_missing_key():
    cfg = build_config({"teacher": {"spec": "claude-haiku", "fallback": "local:smollm2"}})
    check_teacher(cfg, env={})  # the user asked for the local teacher when the API cannot be used
    with pytest.raises(TeacherAuthError, match="ANTHROPIC_API_KEY"):
        check_teacher(build_config({"teacher": {"spec": "claude-haiku"}}), env={})
    with pytest.raises(TeacherAuthError, match="ANTHROPIC_API_KEY"):  # --no-fallback: the key is required
        check_teacher(build_config({"teacher": {"spec": "claude-haiku", "fallback": "local:smollm2", "no_fallback": True}}), env={})
    preflight(build_config({"teacher": {"spec": "claude-haiku"}}), env={"ANTHROPIC_API_KEY": "sk-x"})
    preflight(build_config({"teacher": {"spec": "claude-haiku"}, "cache": {"replay": "runs/x"}}), env={})  # replay: no teacher
