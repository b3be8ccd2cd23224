"""TRL's training knobs reach GRPOConfig (and so the run): dtype, gradient checkpointing and
accumulation, LR schedule and warm-up, epochs, hub, run name, logging dir, save steps, `trl:`."""

import argparse
import copy
import json

import pytest
import torch

from omniopd.config import build_config
from omniopd.config_flags import add_config_flags, config_from_args
from omniopd.errors import ConfigError
from omniopd.train import epoch_steps, grpo_args, run_train
from providers.local import LocalTeacher
from tests.tiny import tiny_llama


def _flags(*argv):
    ap = argparse.ArgumentParser()
    add_config_flags(ap)
    return config_from_args(ap.parse_args(list(argv)))


def test_flags_map_onto_grpo_config(tmp_path):
    cfg = _flags("--dtype", "bf16", "--gradient-checkpointing", "--gradient-accumulation-steps", "2",
                 "--lr-scheduler", "cosine", "--warmup-ratio", "0.1", "--push-to-hub", "--hub-model-id", "me/student",
                 "--run-name", "r1", "--logging-dir", str(tmp_path / "tb"), "--save-steps", "7",
                 "--prompts-per-step", "2", "--generations", "4")
    args = grpo_args(cfg, tmp_path)
    assert args.bf16 and not args.fp16
    assert args.gradient_checkpointing
    # 2 prompts * 4 generations per optimizer step, in 2 micro-batches of 4 from one generation
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (4, 2, 2)
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == pytest.approx(0.1)
    assert args.push_to_hub and args.hub_model_id == "me/student"
    assert args.run_name == "r1" and args.save_steps == 7
    assert cfg.output.logging_dir == str(tmp_path / "tb")
    assert args.beta == 0.0 and args.loss_type == "dapo"


def test_defaults_keep_todays_behaviour(tmp_path):
    args = grpo_args(build_config(), tmp_path)
    assert args.lr_scheduler_type == "constant" and args.warmup_steps == 0
    assert args.gradient_accumulation_steps == 1 and not args.gradient_checkpointing and not args.push_to_hub
    assert not args.bf16 or torch.cuda.is_available()


def test_bad_knob_values_fail_with_their_names(tmp_path):
    with pytest.raises(ConfigError, match="learner.warmup_ratio"):
        build_config(None, {"learner.warmup_ratio": 1.5})
    with pytest.raises(ConfigError, match="student.dtype"):
        build_config(None, {"student.dtype": "int8"})
    with pytest.raises(ConfigError, match="output.hub_model_id"):
        build_config(None, {"output.hub_model_id": "me/x"})
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):  # 3 does not divide 2 * 4 completions
        grpo_args(build_config(None, {"learner.gradient_accumulation_steps": 3}), tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs a GPU"):
            grpo_args(build_config(None, {"student.dtype": "fp16"}), tmp_path)


def test_trl_section_passes_fields_through_and_validates(tmp_path):
    cfg = build_config({"trl": {"logging_first_step": True, "weight_decay": 0.01}})
    args = grpo_args(cfg, tmp_path)
    assert args.logging_first_step is True and args.weight_decay == 0.01
    with pytest.raises(ConfigError, match=r"trl\.no_such_field: not a field of trl\.GRPOConfig"):
        build_config({"trl": {"no_such_field": 1}})
    with pytest.raises(ConfigError, match=r"trl\.beta: set by omniopd; use learner\.beta"):
        build_config({"trl": {"beta": 0.04}})
    with pytest.raises(ConfigError, match="trl: must be a mapping"):
        build_config({"trl": [1, 2]})
    with pytest.raises(ConfigError, match=r"trl\.top_entropy_quantile: acts in TRL's own loss"):
        build_config({"trl": {"top_entropy_quantile": 0.2}})  # our loss replaces TRL's: it would do nothing
    with pytest.raises(ConfigError, match=r"GRPOConfig rejected trl\.logging_strategy"):
        grpo_args(build_config({"trl": {"logging_strategy": "sometimes"}}), tmp_path)


def test_epochs_become_steps():
    assert epoch_steps(1, 10, 2) == 5
    assert epoch_steps(2, 9, 2) == 10
    assert epoch_steps(0.5, 4, 2) == 1


def _tiny_run(tmp_path, tok, name, **values):
    base = {"student.generations": 2, "student.max_new_tokens": 12, "scheduler.chunk_tokens": 4,
            "scheduler.chunks_per_completion": 2, "teacher.samples": 2, "scorer.similarity": "edit",
            "learner.max_steps": 2, "learner.learning_rate": 5e-3, "learner.prompts_per_step": 2, "learner.seed": 0,
            "output.dir": str(tmp_path / name), "output.save_steps": 100, **values}
    student = tiny_llama(tok, seed=0)
    before = copy.deepcopy(student.state_dict())
    teacher = LocalTeacher(tiny_llama(tok, seed=1), tok, spec="local:tiny-teacher")
    result = run_train(build_config(None, base), model=student, tokenizer=tok, teacher=teacher, echo=False)
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    moved = sum(float((v.float() - before[k].float()).abs().sum()) for k, v in student.state_dict().items())
    return result, rows, moved


def test_bf16_run_trains_and_saves_bf16(tmp_path, tiny_tok):
    result, rows, moved = _tiny_run(tmp_path, tiny_tok, "bf16", **{"student.dtype": "bf16"})
    assert len(rows) == 2 and moved > 0
    saved = json.loads((result.final_dir / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "bfloat16"
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(result.final_dir, dtype="auto").dtype == torch.bfloat16


def test_accumulation_checkpointing_and_schedule_in_a_run(tmp_path, tiny_tok):
    result, rows, moved = _tiny_run(tmp_path, tiny_tok, "accum", **{
        "learner.gradient_accumulation_steps": 2, "learner.gradient_checkpointing": True,
        "learner.lr_scheduler": "linear", "learner.warmup_ratio": 0.5, "learner.max_steps": 4})
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and moved > 0
    lrs = [r["learning_rate"] for r in rows]
    # linear with 2 warm-up steps of 4 (transformers logs the rate each step was taken with): 0 -> peak -> down
    assert lrs == pytest.approx([0.0, 2.5e-3, 5e-3, 2.5e-3])
