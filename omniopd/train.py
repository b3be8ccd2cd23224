"""`omniopd train`: wire config -> student, data, teacher, scorer, pipeline, learner, and run.

`run_train(cfg)` is the programmatic entry point; in-memory parts (`model`, `tokenizer`,
`teacher`, `phi`) may be passed in — the lab and the tests use that to run the real training
path on tiny models built in-process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omniopd.config import TrainConfig
from omniopd.errors import BudgetExceededError, ConfigError

log = logging.getLogger("omniopd")


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    steps: int
    stopped_early: str | None
    teacher_samples: int
    teacher_usd: float


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def newest_checkpoint(output_dir: Path) -> Path | None:
    cps = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(cps, key=lambda p: int(p.name.split("-")[-1])) if cps else None


def grpo_args(cfg: TrainConfig, output_dir: Path):
    """The TRL GRPOConfig our learner runs under (beta=0: the exact KL anchor is ours)."""
    import torch
    from trl import GRPOConfig

    L, S = cfg.learner, cfg.student
    batch = L.prompts_per_step * S.generations
    report_to = [] if cfg.output.report_to == "none" else [x.strip() for x in cfg.output.report_to.split(",")]
    return GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=S.generations,
        num_iterations=L.updates_per_batch,
        max_steps=L.max_steps,
        learning_rate=L.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=L.max_grad_norm,
        epsilon=L.epsilon,
        beta=0.0,
        loss_type="dapo",
        temperature=S.temperature,
        max_completion_length=S.max_new_tokens,
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.output.save_steps,
        save_total_limit=cfg.output.save_total_limit,
        report_to=report_to,
        seed=L.seed,
        data_seed=L.seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        remove_unused_columns=False,
        disable_tqdm=False,
        log_completions=False,
    )


def run_train(cfg: TrainConfig, *, model=None, tokenizer=None, teacher=None, phi=None, recorder=None,
              extra_callbacks: list | None = None, echo: bool = True, verifier=None) -> TrainResult:
    """Run `omniopd train` with a resolved config (see module docstring)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from datasets import Dataset

    from omniopd.data import load_prompts
    from omniopd.learner import OmniOPDTrainer
    from omniopd.models import load_causal_lm
    from omniopd.pipeline import Pipeline
    from omniopd.run_log import MetricsLogger
    from omniopd.similarity import build_similarity
    from omniopd.teachers import build_teacher
    from scheduler import ForkScheduler

    out = Path(cfg.output.dir)
    resume_from = None
    if cfg.output.resume:
        resume_from = newest_checkpoint(out)
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint-* directory in {out}; start without --resume")
    elif out.exists() and (out / "metrics.jsonl").exists():
        raise ConfigError(f"output.dir {out} already holds a run; pass --resume to continue it or choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_yaml(out / "config.yaml")
    _seed_everything(cfg.learner.seed)

    rows = load_prompts(cfg.data.path, cfg.data.prompt_field, cfg.data.answer_field, cfg.data.split,
                        cfg.data.limit, cfg.student.system_prompt)
    if model is None:
        log.info("loading student %s", cfg.student.model)
        model, tokenizer = load_causal_lm(cfg.student.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # --- teacher-sample cache, episodes, offline replay (cache/, via omniopd/run_cache.py) ---
    from omniopd.run_cache import ReplayRollouts, open_run_cache

    from omniopd.ledger import LEDGER_FILE, SpendLedger

    given_teacher = teacher
    ledger = SpendLedger(out / LEDGER_FILE, cfg.teacher.max_usd)  # survives --resume; shared by all ranks
    run_cache = open_run_cache(cfg, out, lambda: given_teacher if given_teacher is not None else build_teacher(cfg.teacher),
                               recorder, ledger=ledger)
    teacher, recorder, replay_rollouts = run_cache.teacher, run_cache.recorder, None
    if run_cache.replay is not None:
        if cfg.method.name != "omniopd":
            raise ConfigError(f"--replay serves recorded teacher text, which --method {cfg.method.name} cannot use: "
                              "it needs the live teacher's log-probabilities; replay with --method omniopd")
        replay_rollouts = ReplayRollouts(run_cache.replay, tokenizer, cfg.learner.prompts_per_step * cfg.student.generations)
        if cfg.learner.max_steps > len(replay_rollouts):
            log.warning("--replay: the recorded run has %d steps; training %d", len(replay_rollouts), len(replay_rollouts))
            cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, max_steps=len(replay_rollouts)))
    # ---
    pipeline = None
    if cfg.method.name == "omniopd":
        if phi is None:
            phi = build_similarity(cfg.scorer.similarity, cfg.scorer.embedder)
        sched = ForkScheduler(cfg.scheduler.chunk_tokens, cfg.scheduler.chunks_per_completion,
                              cfg.scheduler.batch_budget, cfg.scheduler.selection)
        pipeline = Pipeline(teacher, tokenizer, sched, phi, samples=cfg.teacher.samples, alpha=cfg.scorer.alpha,
                            trim_slack=cfg.scorer.trim_slack, token_factor=cfg.teacher.token_factor,
                            teacher_temperature=cfg.teacher.temperature, max_usd=cfg.teacher.max_usd, recorder=recorder,
                            progress=echo, skip_missing=cfg.cache.replay is not None and not cfg.cache.strict_replay)
    # white-box methods read the teacher model itself, not the cache in front of it
    method, drift_gate = build_method(cfg, tokenizer, getattr(teacher, "inner", None) or teacher, pipeline, rows, verifier)
    peft_config = None
    if cfg.student.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.student.lora_r, lora_alpha=cfg.student.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    metrics = MetricsLogger(out / "metrics.jsonl", pipeline=pipeline, echo=echo, ledger=ledger)
    trainer = OmniOPDTrainer(
        model=model,
        args=grpo_args(cfg, out),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[metrics, *(extra_callbacks or [])],
        pipeline=pipeline,
        kl_beta=cfg.learner.beta if cfg.method.name == "omniopd" else 0.0,  # OPD variants: no reference KL
        max_new_tokens=cfg.student.max_new_tokens,
        progress=echo,
        replay=replay_rollouts,
        method=method,
        drift_gate=drift_gate,
    )
    stopped = None
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BudgetExceededError as exc:
        stopped = str(exc)
        trainer._save_checkpoint(trainer.model, trial=None)
        metrics.log_stop(trainer.state, "max_teacher_usd")
        log.warning("%s", exc)
    finally:
        if pipeline is not None:
            pipeline.close()
        if method is not None:
            method.close()
        run_cache.close()
        spent = ledger.spent
        ledger.close()
        if run_cache.summary():
            log.info("%s", run_cache.summary())
    final_dir = None
    if stopped is None:
        final_dir = out / "final"
        trainer.save_model(str(final_dir))
        tokenizer.save_pretrained(str(final_dir))
    result = TrainResult(out, final_dir, trainer.state.global_step, stopped,
                         pipeline.teacher_samples_total if pipeline else 0, spent)
    return result


def build_method(cfg: TrainConfig, tokenizer, teacher, pipeline, rows: list[dict[str, Any]], verifier=None):
    """(MethodSignals or None, DriftGate) for `--method` / `--drift-gate` (README, section Methods).

    Plain OmniOPD keeps the learner's own audit path (None). White-box methods check teacher
    access here, before any model trains: an API teacher or a different tokenizer is a
    `TeacherAccessError` naming the methods that work.
    """
    import torch

    from omniopd.methods.drift_gate import DriftGate
    from omniopd.methods.signals import MethodSignals

    M = cfg.method
    gate = DriftGate.build(M.drift_gate, tokenizer, block=M.gate_block_tokens, tau=M.gate_tau)
    if M.name == "omniopd" and not M.verifier_gate:
        return None, gate
    needs_answers = M.name == "sg-opd" or M.verifier_gate
    if needs_answers and not any(r.get("answer") for r in rows):
        flag = "--method sg-opd" if M.name == "sg-opd" else "--verifier-gate"
        raise ConfigError(f"{flag} needs reference answers for its verifier: set --answer-field (GSM8K: answer)")
    if needs_answers and verifier is None:
        from omniopd.methods.verifier import VERIFIERS

        verifier = VERIFIERS[M.verifier]
        verifier("0", "0")  # imports its backend now, so a missing dependency fails before training
    whitebox = None
    if M.name != "omniopd":
        whitebox = _whitebox(cfg, teacher, tokenizer)
    generator = torch.Generator().manual_seed(cfg.learner.seed)
    return MethodSignals(M, tokenizer, group_size=cfg.student.generations, max_new_tokens=cfg.student.max_new_tokens,
                         total_steps=cfg.learner.max_steps, pipeline=pipeline, whitebox=whitebox, teacher=teacher,
                         verifier=verifier, temperature=cfg.student.temperature, generator=generator), gate


def _whitebox(cfg: TrainConfig, teacher, tokenizer):
    """White-box access for opd/sg-opd/tropd: the local model, or a vLLM server's prompt_logprobs."""
    from omniopd.teachers import build_prompt_logprobs_scorer
    from providers.whitebox import whitebox_for

    scorer = build_prompt_logprobs_scorer(cfg.teacher)
    return whitebox_for(scorer if scorer is not None else teacher, tokenizer, cfg.method.name)


def summarize(result: TrainResult) -> str:
    lines = [f"omniopd: {result.steps} steps, {result.teacher_samples} teacher samples, ${result.teacher_usd:.4f} teacher spend"
             " (the run's total, resumes included)"]
    if result.stopped_early:
        lines.append(f"omniopd: stopped early: {result.stopped_early}")
    lines.append(f"omniopd: results in {result.output_dir}/ (config.yaml, metrics.jsonl, checkpoint-*/"
                 + (", final/)" if result.final_dir else ")"))
    return "\n".join(lines)
