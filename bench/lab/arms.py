"""The lab's arms: ways to spend one teacher budget on a student, and the ARMS table.

Every arm gets a fresh copy of the same weak student (one per seed), the same teacher, and the
same budget of teacher output tokens; it returns the student's held-out accuracy, the teacher
tokens it actually used and its wall time. The teacher is used two ways:

- as text, through the provider interface only (`providers.local.LocalTeacher`), exactly as an
  API teacher would be: the SFT arm asks it for whole solutions, the OmniOPD arms ask it (via
  omniopd's real training entry point, `omniopd.train.run_train`) to continue the student's
  prefixes. Teacher tokens = the output tokens the provider reports.
- as a white-box model for standard OPD (TRL's `DistillationTrainer`): the teacher scores every
  token of the student's rollouts with its full distribution; teacher tokens = completion
  tokens it scored.

Budgets are enforced by stopping: the SFT arm stops requesting solutions, the trainers stop
after the step on which the budget is reached (so an arm overshoots by at most one step).

To add an arm (e.g. another method of the pipeline): add an `Arm` to `ARMS` with the config
overrides it needs; `pipeline_arm` runs any `omniopd train` configuration.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from bench.lab import nets
from omniopd.evaluate import evaluate


@dataclass
class ArmResult:
    arm: str
    seed: int
    accuracy: float
    teacher_tokens: int
    wall_s: float
    steps: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Arm:
    name: str
    kind: str  # "none" | "sft" | "opd" | "pipeline"
    help: str
    overrides: dict[str, Any] = field(default_factory=dict)


# --- the table ------------------------------------------------------------------------------
ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("no-training", "none", "the weak student as it starts"),
    Arm("sft", "sft", "SFT on teacher-written solutions (teacher as text, whole answers)"),
    Arm("opd", "opd", "white-box on-policy distillation: TRL DistillationTrainer, reverse KL to teacher logits"),
    Arm("omniopd", "pipeline", "OmniOPD, omniopd defaults (entropy chunks, alpha=1, beta=0.1, phi=embedding)"),
    Arm("omniopd-uniform", "pipeline", "ablation: chunks spread uniformly", {"scheduler.selection": "uniform"}),
    Arm("omniopd-alpha0", "pipeline", "ablation: no Dirichlet smoothing (alpha=0)", {"scorer.alpha": 0.0}),
    Arm("omniopd-beta0", "pipeline", "ablation: no KL anchor (beta=0)", {"learner.beta": 0.0}),
    Arm("omniopd-edit", "pipeline", "phi = normalised edit distance", {"scorer.similarity": "edit"}),
    Arm("omniopd-rouge1", "pipeline", "phi = ROUGE-1 F1", {"scorer.similarity": "rouge1"}),
    # the other methods of the same pipeline (issue 6; docs in the README's Methods section)
    Arm("opd-pipeline", "pipeline", "standard OPD in omniopd's learner: A_t = log pi_T - log pi_old, no KL anchor",
        {"method.name": "opd"}),
    Arm("sg-opd", "pipeline", "SG-OPD: sign gate 1.8/1.0 by math-verify verdicts + verified teacher rows at cold start",
        {"method.name": "sg-opd"}),
    Arm("tropd", "pipeline", "TrOPD: Bernoulli trust, forward KL on outliers (teacher top-64), teacher-prefix guidance",
        {"method.name": "tropd"}),
    Arm("omniopd-2upd", "pipeline", "OmniOPD, 2 updates per batch of rollouts (no gate): the gate's control",
        {"learner.updates_per_batch": 2}),
    Arm("omniopd-2upd-gated", "pipeline", "OmniOPD, 2 updates per batch + blockwise policy-drift gate (64 tokens)",
        {"learner.updates_per_batch": 2, "method.drift_gate": "block"}),
    Arm("omniopd-verifier-gate", "pipeline", "OmniOPD with chunk weights scaled by math-verify verdicts (x1.8 / x0.5)",
        {"method.verifier_gate": True}),
]}


@dataclass
class LabContext:
    """What every arm shares in one lab run."""

    scale: Any  # bench.lab.run.Scale
    tokenizer: Any
    teacher: Any
    train: list  # list[tasks.Problem]
    test_rows: list[dict]
    train_jsonl: Path
    workdir: Path
    phis: dict[str, Callable] = field(default_factory=dict)

    def held_out_accuracy(self, model) -> float:
        r = evaluate(model, self.tokenizer, self.test_rows, max_new_tokens=self.scale.max_new_tokens,
                     batch_size=self.scale.eval_batch, progress=False, keep_texts=False)
        return r.greedy_accuracy

    def phi(self, name: str):
        """Similarity functions are built once per lab run (the embedder loads once)."""
        if name not in self.phis:
            from omniopd.similarity import build_similarity

            self.phis[name] = build_similarity(name, tokenizer=self.tokenizer)
        return self.phis[name]

    def local_teacher(self):
        from providers.local import LocalTeacher

        return LocalTeacher(self.teacher, self.tokenizer, spec="local:lab-teacher")


class StopAtBudget(TrainerCallback):
    """Stops a TRL trainer after the step on which `spent()` reaches `budget`."""

    def __init__(self, spent: Callable[[], float], budget: int):
        self.spent, self.budget = spent, budget

    def on_step_end(self, args, state, control, **kwargs):
        if self.spent() >= self.budget:
            control.should_training_stop = True
        return control


# --- arms -----------------------------------------------------------------------------------
def run_arm(arm: Arm, ctx: LabContext, student, seed: int) -> ArmResult:
    start_weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
    student = copy.deepcopy(student)
    t0 = time.perf_counter()
    if arm.kind == "none":
        tokens, steps, extra = 0, 0, {}
    elif arm.kind == "sft":
        tokens, steps, extra = _sft(ctx, student, seed)
    elif arm.kind == "opd":
        tokens, steps, extra = _opd(ctx, student, seed)
    elif arm.kind == "pipeline":
        tokens, steps, extra = pipeline_arm(ctx, student, seed, arm.name, arm.overrides)
    else:
        raise ValueError(f"unknown arm kind {arm.kind!r}")
    train_s = time.perf_counter() - t0
    acc = ctx.held_out_accuracy(student)
    moved = sum(float((v.detach() - start_weights[k]).float().norm()) ** 2 for k, v in student.state_dict().items()) ** 0.5
    return ArmResult(arm.name, seed, acc, int(tokens), train_s, steps, {**extra, "weights_moved_l2": moved})


def collect_teacher_solutions(ctx: LabContext, budget: int, seed: int) -> tuple[list[tuple[str, str]], int]:
    """Whole solutions from the teacher, as text via the provider interface, until `budget` tokens."""
    from providers.base import Message, TeacherRequest

    teacher = ctx.local_teacher()
    order = list(range(len(ctx.train)))
    random.Random(seed).shuffle(order)
    pairs: list[tuple[str, str]] = []
    spent = 0

    async def batch(qs: list[str]):
        reqs = [TeacherRequest((Message("user", q),), "", 1, ctx.scale.max_new_tokens, temperature=1.0) for q in qs]
        return await asyncio.gather(*(teacher.sample(r) for r in reqs))

    torch.manual_seed(seed)
    i, per = 0, 64
    while spent < budget and i < len(order):
        qs = [ctx.train[j].question for j in order[i:i + per]]
        i += per
        for q, samples in zip(qs, asyncio.run(batch(qs))):
            for s in samples:
                if spent >= budget:
                    break
                pairs.append((q, s.text.strip()))
                spent += int(s.output_tokens)
    return pairs, spent


def _sft(ctx: LabContext, student, seed: int) -> tuple[int, int, dict]:
    s = ctx.scale
    pairs, spent = collect_teacher_solutions(ctx, s.budget_tokens, seed)
    steps = max(1, math.ceil(s.sft_epochs * len(pairs) / s.arm_batch))
    nets.sft(student, ctx.tokenizer, pairs, steps=steps, batch_size=s.arm_batch, lr=s.arm_lr, seed=seed, warmup=0)
    return spent, steps, {"solutions": len(pairs)}


def _opd(ctx: LabContext, student, seed: int) -> tuple[int, int, dict]:
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    s = ctx.scale
    out = ctx.workdir / f"opd-{seed}"
    shutil.rmtree(out, ignore_errors=True)

    class CountingDistillationTrainer(DistillationTrainer):
        """Counts the completion tokens the white-box teacher scores (its 'output' tokens)."""

        scored = 0

        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            type(self).scored += int(batch["completion_mask"].sum())
            return batch

    args = DistillationConfig(
        output_dir=str(out), per_device_train_batch_size=s.prompts_per_step * s.generations, max_steps=s.max_arm_steps,
        learning_rate=s.arm_lr, lr_scheduler_type="constant", warmup_steps=0, max_completion_length=s.max_new_tokens,
        temperature=1.0, beta=1.0, gradient_checkpointing=False, bf16=False, use_cpu=True, logging_steps=1,
        save_strategy="no", report_to=[], seed=seed, data_seed=seed, disable_tqdm=True, max_grad_norm=1.0,
    )
    rows = [{"prompt": [{"role": "user", "content": p.question}]} for p in ctx.train]
    trainer = CountingDistillationTrainer(
        model=student, teacher_model=ctx.teacher, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=ctx.tokenizer,
        callbacks=[StopAtBudget(lambda: CountingDistillationTrainer.scored, s.budget_tokens)],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # one dict per step on stdout otherwise
    trainer.train()
    student.eval()
    return CountingDistillationTrainer.scored, trainer.state.global_step, {}


def pipeline_arm(ctx: LabContext, student, seed: int, name: str, overrides: dict[str, Any]) -> tuple[int, int, dict]:
    """Train through omniopd's real entry point with the teacher behind the provider interface."""
    from omniopd.config import build_config
    from omniopd.train import run_train

    s = ctx.scale
    out = ctx.workdir / f"{name}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    base = {
        "student.model": "lab-student",
        "student.generations": s.generations,
        "student.max_new_tokens": s.max_new_tokens,
        "teacher.spec": "local:lab-teacher",
        "teacher.samples": s.teacher_samples,
        "data.path": str(ctx.train_jsonl),
        "data.answer_field": "answer",
        "scheduler.chunk_tokens": s.chunk_tokens,
        "scheduler.chunks_per_completion": s.chunks_per_completion,
        "learner.learning_rate": s.arm_lr,
        "learner.prompts_per_step": s.prompts_per_step,
        "learner.max_steps": s.max_arm_steps,
        "learner.seed": seed,
        "output.dir": str(out),
        "output.save_steps": 10**9,
        "output.save_total_limit": 1,
        # every arm pays for its own teacher samples: no sample cache shared across arms/seeds
        "cache.mode": "off",
        "cache.no_episodes": True,
    }
    cfg = build_config(overrides={**base, **overrides})
    teacher = ctx.local_teacher()
    # teacher output tokens, plus the tokens a white-box method had the teacher score
    spent = lambda: teacher.usage_totals()["output_tokens"] + teacher.usage_totals().get("scored_tokens", 0.0)  # noqa: E731
    result = run_train(cfg, model=student, tokenizer=ctx.tokenizer, teacher=teacher, phi=ctx.phi(cfg.scorer.similarity),
                       extra_callbacks=[StopAtBudget(spent, s.budget_tokens)], echo=False)
    student.eval()
    return int(spent()), result.steps, {"teacher_samples": result.teacher_samples}
