"""`omniopd train` through the console entry point, on tiny models saved to disk."""

import json

import pytest
import yaml

from omniopd.cli import main


@pytest.fixture
def tiny_dirs(tmp_path, tiny_tok):
    from tests.tiny import tiny_llama

    student, teacher = tmp_path / "student", tmp_path / "teacher"
    for path, seed in ((student, 0), (teacher, 1)):
        m = tiny_llama(tiny_tok, seed=seed)
        m.save_pretrained(path)
        tiny_tok.save_pretrained(path)
    return student, teacher


def _argv(student, teacher, out, *extra):
    return ["train", "--method", "omniopd", "--student", str(student), "--teacher", f"local:{teacher}", "--output", str(out),
            "--similarity", "edit", "--generations", "2", "--prompts-per-step", "1", "--max-new-tokens", "20",
            "--chunk-tokens", "5", "--chunks-per-completion", "2", "--teacher-samples", "2", "--seed", "1",
            "--learning-rate", "0.01", *extra]


def test_train_writes_run_directory_and_resumes(tmp_path, tiny_dirs, capsys):
    student, teacher = tiny_dirs
    out = tmp_path / "run"
    assert main(_argv(student, teacher, out, "--max-steps", "2")) == 0
    stdout = capsys.readouterr().out
    assert f"results in {out}" in stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("step", "reward_mean", "kl", "forks", "teacher_samples", "seconds"):
            assert key in r
        assert 0.0 <= r["reward_mean"] <= 1.0
    assert sum(r["teacher_samples"] for r in rows) > 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["learner"]["max_steps"] == 2 and resolved["scorer"]["similarity"] == "edit"
    assert (out / "checkpoint-2").is_dir() and (out / "final" / "config.json").is_file()

    # a second run into the same directory must not clobber it ...
    assert main(_argv(student, teacher, out, "--max-steps", "3")) == 2
    assert "--resume" in capsys.readouterr().err
    # ... and --resume continues from checkpoint-2 to step 3
    assert main(_argv(student, teacher, out, "--max-steps", "3", "--resume")) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_dirs, capsys):
    student, teacher = tiny_dirs
    assert main(_argv(student, teacher, tmp_path / "fresh", "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_defaults_on_packaged_models(tmp_path, capsys, monkeypatch):
    """README command 1's run, shortened: packaged SmolLM2 student and teacher, packaged MiniLM."""
    out = tmp_path / "demo"
    assert main(["train", "--output", str(out), "--max-steps", "1", "--prompts-per-step", "1", "--generations", "2",
                 "--max-new-tokens", "48", "--chunk-tokens", "16", "--chunks-per-completion", "1",
                 "--teacher-samples", "2"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["teacher_samples"] > 0
    assert (out / "final" / "model.safetensors").is_file()


def test_console_is_one_line_per_step_and_every_figure_still_recorded(tmp_path, tiny_dirs):
    """No TRL dict, no per-rollout bars, no loading bars; metrics.jsonl and report_to keep every figure."""
    from tests.test_fail_fast import omniopd

    student, teacher = tiny_dirs
    out = tmp_path / "run"
    r = omniopd(*_argv(student, teacher, out, "--max-steps", "2", "--report-to", "tensorboard", "--cache-mode", "off"))
    assert r.returncode == 0, r.stderr[-2000:]
    console = (r.stdout + r.stderr).replace("\r", "\n")
    assert [ln.split("|")[0].strip() for ln in console.splitlines() if ln.startswith("step ")] == ["step    1", "step    2"]
    for noise in ("{'loss'", "'grad_norm'", "rollouts (", "teacher:", "Loading weights", "Writing model shards",
                  "Generating train split"):
        assert noise not in console, noise
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "grad_norm", "pihat_mean", "entropy", "teacher_seconds", "teacher_samples_by_teacher"):
        assert all(key in row for row in rows), key
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and b"omniopd/pihat_mean" in b"".join(p.read_bytes() for p in events)


def test_final_is_portable_card_adapter_base_and_dtype(tmp_path, tiny_tok):
    """Our model card, a LoRA adapter naming the student's real base, final/ in the student's dtype."""
    import torch

    from omniopd.models import _local_spec, base_model_id, load_causal_lm
    from tests.tiny import tiny_llama

    student, teacher = tmp_path / "student-bf16", tmp_path / "teacher"
    tiny_llama(tiny_tok, seed=0).to(torch.bfloat16).save_pretrained(student)
    tiny_tok.save_pretrained(student)
    tiny_llama(tiny_tok, seed=1).save_pretrained(teacher)
    tiny_tok.save_pretrained(teacher)
    full, lora = tmp_path / "full", tmp_path / "lora"
    assert main(_argv(student, teacher, full, "--max-steps", "1", "--save-steps", "0", "--cache-mode", "off")) == 0
    assert not list(full.glob("checkpoint-*"))  # save_steps 0: final/ only
    model, _ = load_causal_lm(str(full))
    assert json.loads((full / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(full / "final" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    card = (full / "final" / "README.md").read_text()
    assert f"base_model: {student.resolve()}" in card and "OmniOPD" in card and "2606.01476" in card
    assert f"local:{teacher}" in card and "GRPO" not in card and "DeepSeekMath" not in card
    assert not (full / "README.md").exists()  # TRL's card is not written anywhere

    assert main(_argv(student, teacher, lora, "--max-steps", "1", "--lora-r", "4", "--cache-mode", "off")) == 0
    adapter = json.loads((lora / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(student.resolve())
    assert "library_name: peft" in (lora / "final" / "README.md").read_text()
    merged, _ = load_causal_lm(str(lora))  # loads on any machine that has the base
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in model.parameters())
    # the packaged student is named by its hub id, and that id loads the packaged copy offline
    assert base_model_id("smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _local_spec("HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2"


def test_each_kind_of_warning_is_shown_once_per_run():
    import logging

    from omniopd.cli_train import quiet_console

    root = logging.getLogger()
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handlers = [Keep(), Keep()]
    for h in handlers:
        root.addHandler(h)
    try:
        with quiet_console():
            for row in range(3):
                logging.getLogger("omniopd").warning("teacher failed on a chunk (row %d)", row)
        with quiet_console():  # a new run shows it again
            logging.getLogger("omniopd").warning("teacher failed on a chunk (row %d)", 7)
    finally:
        for h in handlers:
            root.removeHandler(h)
    assert seen == ["teacher failed on a chunk (row 0)"] * 2 + ["teacher failed on a chunk (row 7)"] * 2
