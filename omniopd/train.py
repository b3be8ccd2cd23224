"""`omniopd train` as named steps, like torchtune's recipes (setup / train / cleanup).

`run_train(cfg)` is the programmatic entry point:

1. the run directory's rules (`omniopd.run_dir`): refuse to overwrite, resume, or stop at once
   when a resumed run has already reached `--max-steps`;
2. setup, one function each: `setup_data` (before any model loads, so bad data fails fast;
   then `config.yaml` is written), `setup_student`, `setup_teacher` (cache, episodes, replay),
   `setup_pipeline` (OmniOPD's audit or another method's signals), `setup_trainer`;
3. `train`: TRL's loop, resumed from the checkpoint; `--max-teacher-usd` stops it through
   `BudgetStop`, a `TrainerCallback` that asks TRL to save and stop;
4. `finish`: `final/` and the `TrainResult`.

In-memory parts (`model`, `tokenizer`, `teacher`, `phi`) may be passed in — the lab and the
tests use that to run the real training path on tiny models built in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omniopd.config import TrainConfig
from omniopd.errors import BudgetExceededError, ConfigError
from omniopd.event_loop import process_loop
from omniopd.preflight import preflight
from omniopd.processes import is_main_process, process_rank, world_size
from omniopd.run_dir import RunDir, newest_checkpoint

log = logging.getLogger("omniopd")


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path | None
    steps: int
    stopped_early: str | None
    teacher_samples: int
    teacher_usd: float
    samples_by_teacher: dict[str, int] = dataclasses.field(default_factory=dict)


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def grpo_args(cfg: TrainConfig, output_dir: Path):
    """The TRL GRPOConfig our learner runs under (beta=0: the exact KL anchor is ours).

    Our knobs map onto TRL's fields (README, "Training"); the `trl:` section adds any other
    GRPOConfig field. A bad value there is a ConfigError naming `trl.<field>`.
    """
    import torch
    from trl import GRPOConfig

    L, S, O = cfg.learner, cfg.student, cfg.output
    batch = L.prompts_per_step * S.generations
    accum = L.gradient_accumulation_steps
    if batch % accum:
        raise ConfigError(f"learner.gradient_accumulation_steps: {accum} must divide the step's completions "
                          f"(prompts_per_step * generations = {batch})")
    report_to = [] if O.report_to == "none" else [x.strip() for x in O.report_to.split(",")]
    cuda = torch.cuda.is_available()
    if S.dtype == "fp16" and not cuda:
        raise ConfigError("student.dtype: fp16 needs a GPU (mixed precision with a loss scaler); use bf16 or fp32 on CPU")
    fields = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch // accum,
        gradient_accumulation_steps=accum,
        steps_per_generation=accum,
        num_generations=S.generations,
        num_iterations=L.updates_per_batch,
        max_steps=L.max_steps,  # run_train turns --num-epochs into steps
        num_train_epochs=L.num_epochs if L.num_epochs is not None else 3.0,
        learning_rate=L.learning_rate,
        lr_scheduler_type=L.lr_scheduler,
        warmup_steps=L.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the run
        max_grad_norm=L.max_grad_norm,
        epsilon=L.epsilon,
        beta=0.0,
        loss_type="dapo",
        temperature=S.temperature,
        max_completion_length=S.max_new_tokens,
        gradient_checkpointing=L.gradient_checkpointing,
        logging_steps=1,
        save_strategy="steps" if O.save_steps else "no",  # 0: final/ only (a budget stop still checkpoints)
        save_steps=O.save_steps or 1,
        save_total_limit=O.save_total_limit,
        report_to=report_to,
        run_name=O.run_name,
        push_to_hub=O.push_to_hub,
        hub_model_id=O.hub_model_id,
        seed=L.seed,
        data_seed=L.seed,
        use_cpu=not cuda,
        bf16=S.dtype == "bf16" or (S.dtype == "auto" and cuda and torch.cuda.is_bf16_supported()),
        fp16=S.dtype == "fp16",
        remove_unused_columns=False,
        disable_tqdm=False,
        log_completions=O.log_completions,
        **_vllm_args(S),
    )
    fields.update(cfg.trl)
    try:
        return GRPOConfig(**fields)
    except (TypeError, ValueError) as exc:
        names = ", ".join(f"trl.{k}" for k in cfg.trl) or "the learner settings"
        raise ConfigError(f"trl.GRPOConfig rejected {names}: {exc}") from exc


def epoch_steps(num_epochs: float, num_prompts: int, prompts_per_step: int) -> int:
    """Optimizer steps for `num_epochs` passes over `num_prompts` prompts (at least 1), all processes together."""
    import math

    return max(1, math.ceil(num_epochs * math.ceil(num_prompts / (prompts_per_step * world_size()))))


def torch_dtype(name: str):
    """The torch dtype of `student.dtype` (auto = fp32 weights)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name, torch.float32)


def _vllm_args(S) -> dict[str, Any]:
    """TRL's vLLM generation knobs for `--use-vllm` (none otherwise, so TRL's defaults stay untouched)."""
    if not S.use_vllm:
        return {}
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("--use-vllm needs vLLM on a GPU machine: pip install vllm (see README, section "
                          "'Overlapped steps and vLLM rollouts'); without it, drop --use-vllm")
    out: dict[str, Any] = {"use_vllm": True, "vllm_mode": S.vllm_mode}
    if S.vllm_server_base_url:
        out["vllm_server_base_url"] = S.vllm_server_base_url
    return out


@dataclass
class Parts:
    """What the setup steps build, in the order they build it; `close()` releases the teacher side."""

    cfg: TrainConfig
    run_dir: RunDir
    rows: Any  # a datasets.Dataset of {"prompt": messages, "answer": ...}
    data_dir: Any = None  # the TemporaryDirectory holding its Arrow file
    model: Any = None
    tokenizer: Any = None
    student_loaded: bool = False  # loaded from --student here (not passed in memory)
    run_cache: Any = None
    teacher: Any = None
    recorder: Any = None
    replay_rollouts: Any = None
    pipeline: Any = None
    method: Any = None
    drift_gate: Any = None
    budget: Any = None  # omniopd.run_log.BudgetStop
    ledger: Any = None  # omniopd.ledger.SpendLedger: the run's spend, across resumes and ranks
    spent_usd: float = 0.0  # the ledger's total when it closed
    metrics: Any = None  # omniopd.run_log.MetricsLogger
    trainer: Any = None
    loop: Any = None  # the process's one event loop (omniopd.event_loop.process_loop), never closed per run
    eval_rows: list[dict[str, Any]] | None = None  # --eval-data, for --eval-every

    @property
    def teacher_side(self) -> Any:
        """What bought the run's teacher text (samples, spend): the OmniOPD pipeline or the SFT recipe."""
        from omniopd.methods.sft import SolutionSFT

        return self.method if isinstance(self.method, SolutionSFT) else self.pipeline

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        if self.method is not None:
            self.method.close()
        if self.run_cache is not None:
            self.run_cache.close()
            if self.run_cache.summary():
                log.info("%s", self.run_cache.summary())
        if self.ledger is not None:
            self.spent_usd = self.ledger.spent
            self.ledger.close()
        if self.data_dir is not None:
            self.data_dir.cleanup()


def run_train(cfg: TrainConfig, *, model=None, tokenizer=None, teacher=None, phi=None, recorder=None,
              extra_callbacks: list | None = None, echo: bool = True, verifier=None) -> TrainResult:
    """Run `omniopd train` with a resolved config (see module docstring): setup, train, finish."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    echo = echo and is_main_process()  # step lines and progress bars: rank 0 of a multi-process run
    preflight(cfg, teacher_given=teacher is not None)
    run_dir = RunDir.open(cfg.output.dir, resume=cfg.output.resume, max_steps=cfg.learner.max_steps)
    if run_dir.finished:
        log.warning("%s already finished at step %d (--max-steps %d): nothing to train; raise --max-steps to continue it",
                    run_dir.path, run_dir.done_steps, cfg.learner.max_steps)
        return TrainResult(run_dir.path, run_dir.final_dir, run_dir.done_steps, None, 0, 0.0)
    parts = setup_data(cfg, run_dir)
    if cfg.learner.num_epochs is not None:  # one pass is ceil(prompts / (prompts per step * processes)) steps
        cfg = parts.cfg = dataclasses.replace(cfg, learner=dataclasses.replace(
            cfg.learner, max_steps=epoch_steps(cfg.learner.num_epochs, len(parts.rows), cfg.learner.prompts_per_step)))
    run_dir.create(cfg)
    _seed_everything(cfg.learner.seed)
    try:
        setup_student(parts, model, tokenizer)
        setup_teacher(parts, teacher, recorder)
        setup_pipeline(parts, phi, verifier)
        setup_trainer(parts, extra_callbacks or [], echo)
        if is_main_process():  # what setup resolved (a replay's step count, the micro-batch budget)
            parts.cfg.save_yaml(run_dir.path / "config.yaml")
        stopped = train(parts)
    finally:
        parts.close()
    return finish(parts, stopped)


def setup_data(cfg: TrainConfig, run_dir: RunDir) -> Parts:
    """The prompt rows (`omniopd.data`), streamed into a memory-mapped dataset in a temporary
    directory (removed by `Parts.close`); read before any model loads, so a bad row fails fast."""
    import tempfile

    from omniopd.data import iter_prompts, prompt_dataset

    d = cfg.data
    args = (d.path, d.prompt_field, d.answer_field, d.split, d.limit, cfg.student.system_prompt)
    # the first rows first: a malformed JSONL file fails before `datasets` (and torch) is imported
    for _ in iter_prompts(*args[:4], min(d.limit or 64, 64), args[5], config=d.config, max_row_bytes=d.max_row_bytes):
        pass
    eval_rows = None
    if d.eval_path and cfg.output.eval_every:  # the held-out set fails fast too
        from omniopd.data import load_prompts

        eval_rows = load_prompts(d.eval_path, d.prompt_field, d.answer_field, d.eval_split, d.eval_limit,
                                 cfg.student.system_prompt, config=d.config, max_row_bytes=d.max_row_bytes)
    tmp = tempfile.TemporaryDirectory(prefix="omniopd-data-")
    try:
        with _datasets_quiet():
            rows = prompt_dataset(tmp.name, *args, config=d.config, max_row_bytes=d.max_row_bytes)
    except BaseException:
        tmp.cleanup()
        raise
    return Parts(cfg, run_dir, rows, data_dir=tmp, eval_rows=eval_rows)


@contextlib.contextmanager
def _datasets_quiet():
    """No "Generating train split" bar for our own in-process copy of the rows."""
    import datasets

    was = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            datasets.enable_progress_bars()


def setup_student(parts: Parts, model=None, tokenizer=None) -> None:
    """The student and its tokenizer: given in memory, or loaded from `--student`."""
    from omniopd.models import load_causal_lm

    S = parts.cfg.student
    dtype = torch_dtype(S.dtype)
    if model is None:
        log.info("loading student %s", S.model)
        model, tokenizer = load_causal_lm(S.model, dtype=dtype)
        parts.student_loaded = True
    elif S.dtype != "auto":
        model = model.to(dtype)
    if parts.cfg.output.logging_dir:  # transformers 5 reads the tensorboard directory from this variable
        os.environ["TENSORBOARD_LOGGING_DIR"] = parts.cfg.output.logging_dir
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    saved = parts.run_dir.path / "tokenizer"
    if not saved.exists() and is_main_process():  # the run's own tokenizer: report/inspect/export read token text with it
        tokenizer.save_pretrained(str(saved))
    parts.model, parts.tokenizer = model, tokenizer


def setup_teacher(parts: Parts, teacher=None, recorder=None) -> None:
    """The teacher behind the sample cache, the episode recorder, and offline replay (`omniopd.run_cache`)."""
    from omniopd.ledger import LEDGER_FILE, SpendLedger
    from omniopd.run_cache import ReplayRollouts, open_run_cache
    from omniopd.teachers import build_teacher

    cfg = parts.cfg
    # every request the cache cannot serve reserves its worst case here first (omniopd/spend.py)
    parts.ledger = SpendLedger(parts.run_dir.path / LEDGER_FILE, cfg.teacher.max_usd)
    run_cache = open_run_cache(cfg, parts.run_dir.path,
                               lambda: teacher if teacher is not None else build_teacher(cfg.teacher), recorder,
                               ledger=parts.ledger)
    parts.run_cache, parts.teacher, parts.recorder = run_cache, run_cache.teacher, run_cache.recorder
    recorded = ((run_cache.replay.meta or {}).get("config") or {}).get("method", {}).get("name") if run_cache.replay else None
    if recorded and (recorded == "sft") != (cfg.method.name == "sft"):
        raise ConfigError(f"--replay {cfg.cache.replay}: that run trained with --method {recorded}; replay it with "
                          f"--method {recorded} (its episodes hold {'teacher solutions' if recorded == 'sft' else 'forks'})")
    if run_cache.replay is not None and cfg.method.name == "sft":
        return  # the replay teacher serves the recorded solutions to the same requests: nothing is resampled
    if run_cache.replay is not None:
        if cfg.method.name != "omniopd":
            raise ConfigError(f"--replay serves recorded teacher text, which --method {cfg.method.name} cannot use: "
                              "it needs the live teacher's log-probabilities; replay with --method omniopd")
        batch = cfg.learner.prompts_per_step * cfg.student.generations
        parts.replay_rollouts = ReplayRollouts(run_cache.replay, parts.tokenizer, batch, rank=process_rank(),
                                               world=world_size())
        recorded = len(parts.replay_rollouts)
        if cfg.learner.max_steps > recorded:
            log.warning("--replay: the recorded run has %d steps; training %d", recorded, recorded)
            parts.cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, max_steps=recorded))


def setup_pipeline(parts: Parts, phi=None, verifier=None) -> None:
    """OmniOPD's audit pipeline (scheduler, teacher, similarity), or another method's signals."""
    from omniopd.pipeline import Pipeline
    from omniopd.similarity import build_similarity
    from scheduler import ForkScheduler

    cfg = parts.cfg
    if cfg.learner.async_steps and parts.replay_rollouts is not None:
        raise ConfigError("--async-steps overlaps the teacher with sampling; --replay samples nothing and asks no "
                          "live teacher, so there is nothing to overlap: drop --async-steps")
    parts.loop = process_loop()  # the process's one event loop: the pipeline, method signals and vLLM scorer share it
    if cfg.method.name == "omniopd":
        if phi is None:
            phi = build_similarity(cfg.scorer.similarity, cfg.scorer.embedder, tokenizer=parts.tokenizer)
        s = cfg.scheduler
        sched = ForkScheduler(s.chunk_tokens, s.chunks_per_completion, s.batch_budget, s.selection)
        parts.pipeline = Pipeline(parts.teacher, parts.tokenizer, sched, phi, samples=cfg.teacher.samples,
                                  alpha=cfg.scorer.alpha, trim_slack=cfg.scorer.trim_slack,
                                  token_factor=cfg.teacher.token_factor, teacher_temperature=cfg.teacher.temperature,
                                  max_usd=cfg.teacher.max_usd, recorder=parts.recorder, progress=False,
                                  skip_missing=cfg.cache.replay is not None and not cfg.cache.strict_replay,
                                  loop=parts.loop)
    if cfg.method.name == "sft":
        parts.method, parts.drift_gate = build_sft(cfg, parts, verifier), None
        return
    # white-box methods read the teacher model itself, not the cache in front of it
    parts.method, parts.drift_gate = build_method(cfg, parts.tokenizer, getattr(parts.teacher, "inner", None) or parts.teacher,
                                                  parts.pipeline, parts.rows, verifier, loop=parts.loop)


def setup_trainer(parts: Parts, extra_callbacks: list, echo: bool = True) -> None:
    """`OmniOPDTrainer` (a `trl.GRPOTrainer`) with the metrics logger and the budget stop."""
    from omniopd.learner import OmniOPDTrainer
    from omniopd.run_log import BudgetStop, MetricsLogger, quiet_console

    cfg = parts.cfg
    peft_config = None
    if cfg.student.lora_r > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.student.lora_r, lora_alpha=cfg.student.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    side = parts.teacher_side
    metrics = parts.metrics = MetricsLogger(parts.run_dir.path / "metrics.jsonl", pipeline=side, echo=echo,
                                            ledger=parts.ledger)
    parts.budget = BudgetStop(side, cfg.teacher.max_usd)
    completion_log = None
    if cfg.output.log_completions and parts.pipeline is not None:  # tables to report_to (omniopd/completion_log.py)
        from omniopd.completion_log import CompletionLog

        completion_log = CompletionLog(parts.tokenizer, parts.teacher, then=parts.pipeline.recorder,
                                       trim_slack=cfg.scorer.trim_slack)
        parts.pipeline.recorder = completion_log
    if parts.eval_rows:
        from omniopd.heldout import HELDOUT_FILE, HeldOutEval

        extra_callbacks = [*extra_callbacks, HeldOutEval(
            parts.run_dir.path / HELDOUT_FILE, parts.eval_rows, parts.tokenizer, every=cfg.output.eval_every,
            max_new_tokens=cfg.student.max_new_tokens, ledger=parts.ledger, teacher_side=side,
            data_name=str(cfg.data.eval_path))]
    args = grpo_args(cfg, parts.run_dir.path)
    parts.trainer = OmniOPDTrainer(
        model=parts.model,
        args=args,
        train_dataset=parts.rows,
        processing_class=parts.tokenizer,
        peft_config=peft_config,
        callbacks=[metrics, parts.budget, *([completion_log] if completion_log is not None else []), *extra_callbacks],
        pipeline=parts.pipeline,
        kl_beta=cfg.learner.beta if cfg.method.name == "omniopd" else 0.0,  # OPD variants: no reference KL
        max_new_tokens=cfg.student.max_new_tokens,
        progress=False,  # one bar for the run (quiet_console), none per rollout
        replay=parts.replay_rollouts,
        method=parts.method,
        drift_gate=parts.drift_gate,
        async_steps=cfg.learner.async_steps,
        microbatch_tokens=step_memory_budget(parts, args.gradient_checkpointing),
    )
    if completion_log is not None:
        completion_log.attach(parts.trainer)
    quiet_console(parts.trainer, echo)


def step_memory_budget(parts: Parts, checkpointing: bool) -> int | None:
    """The learner's micro-batch budget (`--max-tokens-per-microbatch`; None = one batch), checked
    against the memory available before step 1: a step estimated past it is reported with the
    knobs that shrink it (omniopd/memory.py), instead of an out-of-memory kill mid-step."""
    import torch

    from omniopd.memory import (activation_bytes_per_token, available_bytes, default_microbatch_tokens,
                                estimate_step_bytes, model_state_bytes, too_big_message)
    from omniopd.teachers import parse_spec

    cfg, model = parts.cfg, parts.model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    total = sum(p.numel() for p in model.parameters())
    trainable = total if cfg.student.lora_r == 0 else max(1, total // 100)  # LoRA: adapters ~1 % of the weights
    reference = total if cfg.student.lora_r == 0 and cfg.method.name == "omniopd" and cfg.learner.beta > 0 else 0
    # an in-process teacher of unknown size is counted as the student's (the packaged default is the same model)
    teacher = total if cfg.cache.replay is None and parse_spec(cfg.teacher.spec).kind == "local" else 0
    per_token = activation_bytes_per_token(model.config, checkpointing=checkpointing)
    avail = available_bytes(device)
    budget = cfg.learner.max_tokens_per_microbatch
    if budget is None:
        budget = default_microbatch_tokens(device, model_states_bytes=model_state_bytes(trainable, total),
                                           act_bytes_per_token=per_token, free_bytes=avail)
    if budget == 0:  # no limit: the estimate is for the largest batch the defaults can build
        S = cfg.student
        rows = cfg.learner.prompts_per_step * S.generations * (1 + cfg.scheduler.chunks_per_completion)
        planned = rows * 2 * S.max_new_tokens // cfg.learner.gradient_accumulation_steps
    else:
        planned = budget
    est = estimate_step_bytes(trainable_params=trainable, total_params=total, reference_params=reference,
                              teacher_params=teacher, microbatch_tokens=planned, act_bytes_per_token=per_token)
    parts.cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, max_tokens_per_microbatch=budget))
    log.info("learner step: micro-batches of %s tokens, estimated peak %.1f GiB (%s available)",
             budget or "unlimited", est.total / 2**30, "?" if avail is None else f"{avail / 2**30:.1f} GiB")
    if avail is not None and est.total > avail:
        log.warning("%s", too_big_message(est, avail, planned))
    return budget or None


def train(parts: Parts) -> str | None:
    """`trainer.train()`, resumed from the run directory's checkpoint; the early-stop reason, or None."""
    resume = parts.run_dir.resume_from
    try:
        parts.trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except BudgetExceededError as exc:  # a request the cap cannot cover (spend ledger), or a step past the cap
        parts.trainer._save_checkpoint(parts.trainer.model, trial=None)  # what the step bought is in the cache
        if parts.metrics is not None:
            parts.metrics.log_stop(parts.trainer.state, "max_teacher_usd")
        log.warning("%s", exc)
        return str(exc)
    if parts.budget is not None and parts.budget.reason:
        log.warning("%s", parts.budget.reason)
        return parts.budget.reason
    return None


def finish(parts: Parts, stopped: str | None) -> TrainResult:
    """Save `final/` (model or LoRA adapter, and the tokenizer) unless the run stopped early."""
    trainer, p = parts.trainer, parts.teacher_side
    result = TrainResult(parts.run_dir.path, None, trainer.state.global_step, stopped,
                         p.teacher_samples_total if p else 0, parts.spent_usd if parts.ledger is not None else 0.0,
                         dict(p.samples_by_teacher) if p else {})
    if stopped is None:
        result.final_dir = save_final(parts, result)
    return result


def save_final(parts: Parts, result: TrainResult) -> Path:
    """`final/`, portable: the student's published dtype, a LoRA adapter naming the original base
    model (not the local GGUF-conversion cache), and our model card (`omniopd.model_card`)."""
    from omniopd.model_card import write_model_card
    from omniopd.models import base_model_id, declared_dtype

    cfg, trainer, final_dir = parts.cfg, parts.trainer, parts.run_dir.final_dir
    spec = cfg.student.model
    base = base_model_id(spec) if parts.student_loaded else spec
    adapter = hasattr(trainer.model, "peft_config")
    if adapter:
        for peft_cfg in trainer.model.peft_config.values():
            peft_cfg.base_model_name_or_path = base
    if cfg.student.dtype != "auto":  # --dtype: saved as trained
        dtype = torch_dtype(cfg.student.dtype)
    else:
        dtype = declared_dtype(spec) if parts.student_loaded else None
    if dtype is not None and next(trainer.model.parameters()).dtype != dtype:
        trainer.model.to(dtype)  # training is over; the in-memory model was loaded by us
    trainer.save_model(str(final_dir))  # every rank: DeepSpeed/FSDP gather the weights; transformers writes on rank 0
    if not is_main_process():
        return final_dir
    parts.tokenizer.save_pretrained(str(final_dir))
    write_model_card(final_dir, cfg, base_model=base, steps=result.steps, teacher_samples=result.teacher_samples,
                     teacher_usd=result.teacher_usd, samples_by_teacher=result.samples_by_teacher, adapter=adapter,
                     prompts=len(parts.rows))
    return final_dir


def build_sft(cfg: TrainConfig, parts: Parts, verifier=None):
    """`--method sft` (omniopd/methods/sft.py): teacher solutions through the run's teacher stack."""
    from omniopd.methods.sft import SolutionSFT

    M, L = cfg.method, cfg.learner
    if L.updates_per_batch > 1 or L.async_steps > 0:
        raise ConfigError("--method sft trains on teacher solutions, not on the student's rollouts: "
                          "--updates-per-batch and --async-steps do not apply (drop them)")
    if M.sft_only_failures or M.sft_negatives > 0 or M.sft_repair:
        if not any(r.get("answer") for r in parts.rows):
            raise ConfigError("--sft-only-failures, --sft-negatives and --sft-repair verify the student's answers: "
                              "set --answer-field (GSM8K: answer)")
        if verifier is None:
            from omniopd.methods.verifier import VERIFIERS

            verifier = VERIFIERS[M.verifier]
            verifier("0", "0")  # imports its backend now, so a missing dependency fails before training
    return SolutionSFT(M, parts.tokenizer, teacher=parts.teacher, group_size=cfg.student.generations,
                       max_new_tokens=cfg.student.max_new_tokens, teacher_temperature=cfg.teacher.temperature,
                       verifier=verifier, recorder=parts.recorder, loop=parts.loop)


def build_method(cfg: TrainConfig, tokenizer, teacher, pipeline, rows: list[dict[str, Any]], verifier=None, loop=None):
    """(MethodSignals or None, DriftGate) for `--method` / `--drift-gate` (README, section Methods).

    Plain OmniOPD keeps the learner's own audit path (None). White-box methods check teacher
    access here, before any model trains: an API teacher or a different tokenizer is a
    `TeacherAccessError` naming the methods that work.
    """
    import torch

    from omniopd.methods.blackbox import blackbox_enabled
    from omniopd.methods.drift_gate import DriftGate
    from omniopd.methods.signals import MethodSignals

    M = cfg.method
    gate = DriftGate.build(M.drift_gate, tokenizer, block=M.gate_block_tokens, tau=M.gate_tau)
    if M.name == "omniopd" and not M.verifier_gate and not blackbox_enabled(M):
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
        whitebox = _whitebox(cfg, teacher, tokenizer, loop)
    generator = torch.Generator().manual_seed(cfg.learner.seed)
    return MethodSignals(M, tokenizer, group_size=cfg.student.generations, max_new_tokens=cfg.student.max_new_tokens,
                         total_steps=cfg.learner.max_steps, pipeline=pipeline, whitebox=whitebox, teacher=teacher,
                         verifier=verifier, temperature=cfg.student.temperature, generator=generator, loop=loop), gate


def _whitebox(cfg: TrainConfig, teacher, tokenizer, loop=None):
    """White-box access for opd/sg-opd/tropd: the local model, or a vLLM server's prompt_logprobs."""
    from providers.whitebox import whitebox_for

    from omniopd.teachers import build_prompt_logprobs_scorer, parse_spec

    if parse_spec(cfg.teacher.spec).kind == "openai-compatible" and cfg.teacher.base_url:
        if loop is None:
            raise ConfigError("a vLLM white-box teacher runs on the process's event loop: pass build_method(loop=...)")
        return whitebox_for(build_prompt_logprobs_scorer(cfg.teacher, run=loop.run), tokenizer, cfg.method.name)
    return whitebox_for(teacher, tokenizer, cfg.method.name)


def summarize(result: TrainResult) -> str:
    by = ", ".join(f"{n} from {t}" for t, n in sorted(result.samples_by_teacher.items()))
    lines = [f"omniopd: {result.steps} steps, {result.teacher_samples} teacher samples" + (f" ({by})" if by else "")
             + f", ${result.teacher_usd:.4f} teacher spend (the run's total, resumes included)"]
    if result.stopped_early:
        lines.append(f"omniopd: stopped early: {result.stopped_early}")
    parts = ["config.yaml", "metrics.jsonl"] + (["checkpoint-*/"] if newest_checkpoint(result.output_dir) else []) \
        + (["final/"] if result.final_dir else [])
    lines.append(f"omniopd: results in {result.output_dir}/ ({', '.join(parts)})")
    return "\n".join(lines)
