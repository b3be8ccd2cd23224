"""The lab's arms: ways to spend one teacher budget on a student, and the ARMS table.

Every arm x seed starts from a copy of the task's start student, with the same teacher and the
same budget — teacher output tokens, or teacher dollars (`Budget`, `bench.lab.dollars`: input
and output tokens priced by a named card) — and is measured at budget milestones along the way (a
learning curve from one run): held-out greedy and temperature-1 accuracy, the KL from the start
and how far the weights moved. The teacher is used two ways:

- as text, through the provider interface only (`providers.local.LocalTeacher`), exactly as an
  API teacher would be (access "black-box"): the SFT arm buys whole solutions (several per
  problem when the budget asks for more than one pass), the OmniOPD arms ask it, via omniopd's
  real training entry point `omniopd.train.run_train`, to continue the student's prefixes; the
  SFT-family recipes (`bench.lab.recipes`) buy whole solutions and add the student's own
  verified samples. Teacher tokens = the output tokens the provider reports; teacher dollars
  add the input it reports (prompt + the student's prefix at a fork).
- as a white-box model ("white-box"): TRL's `DistillationTrainer` (standard OPD, reverse KL to
  the teacher's full distribution on every token the student samples) and omniopd's white-box
  methods; teacher tokens = completion tokens the teacher scored.

`noise-floor` (access "none") moves the start by isotropic Gaussian noise of the size the
trained arms moved it (weight L2 at each milestone, averaged over the other arms): the change
that is not caused by any signal. Budgets are enforced by stopping after the step on which a
milestone is reached (an arm overshoots by at most one step, recorded in `teacher_tokens`).

To add an arm (e.g. another method of the pipeline): add an `Arm` to `ARMS` with the config
overrides it needs (dotted `omniopd train` keys); `pipeline_arm` runs any configuration.
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback

from bench.lab import nets
from bench.lab.dollars import DEFAULT_CARD, Spend, price_card
from bench.lab.recipes import Recipe


@dataclass(frozen=True)
class Arm:
    name: str
    kind: str  # "none" | "noise" | "recipe" | "opd" | "pipeline"
    access: str  # "none" | "black-box" | "white-box"
    help: str
    overrides: dict[str, Any] = field(default_factory=dict)  # omniopd train keys (pipeline; a recipe's on-policy phase)
    recipe: Recipe = field(default_factory=Recipe)  # kind "recipe": what the SFT-family loop buys and trains on


_BB, _WB = "black-box", "white-box"
# the paper's signal (--paper-loss: no baseline, no imitation, phi=embedding, N from the scale): the base of
# every OmniOPD ablation and signal arm, so their rows keep meaning what they measured before the default changed
_PAPER = {"method.paper_loss": True}
# black-box DAgger at N=1 pinned on --paper-loss (= omniopd train's default signal, spelled out)
_DAGGER1 = {**_PAPER, "method.pihat_baseline": "loo", "method.fork_imitation": 2.0, "teacher.token_factor": 4.0,
            "scorer.similarity": "numbers", "teacher.samples": 1}

# --- the table ------------------------------------------------------------------------------
ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("no-training", "none", "none", "the start student, untouched"),
    Arm("noise-floor", "noise", "none", "the start plus random weight noise of the L2 size the trained arms moved it"),
    Arm("sft", "recipe", _BB, "SFT on teacher-written solutions (teacher as text, whole answers, bought as it trains)"),
    Arm("opd", "opd", _WB, "white-box on-policy distillation: TRL DistillationTrainer, reverse KL to teacher logits"),
    # issue 18's recipes: SFT plus what the student's own verified samples give for free (bench/lab/recipes.py)
    Arm("sft-neg", "recipe", _BB, "SFT + the student's verifier-wrong samples (k=4) as DPO negatives against a snapshot "
        "(beta 0.1, weight 1), CE on the teacher's answer kept; zero extra teacher tokens", recipe=Recipe(negatives=True)),
    Arm("sft-gated", "recipe", _BB, "failure gating: k=4 student samples per problem; a teacher solution bought only where "
        "all fail the verifier, the student's own correct samples trained on for free", recipe=Recipe(gated=True)),
    Arm("sft-gated-neg", "recipe", _BB, "sft-gated + the wrong samples as DPO negatives (against the teacher's solution "
        "or the student's own correct one)", recipe=Recipe(gated=True, negatives=True)),
    Arm("oracle-repair", "recipe", _BB, "the student's first wrong step corrected from the reference (an oracle, an upper "
        "bound on repair), trained on its own correct prefix + the corrected rest; billed as a minimal-repair request "
        "would be (input: prompt + the student's answer, output: the corrected rest)", recipe=Recipe(oracle_repair=True)),
    Arm("sft-reference", "recipe", _BB, "control for oracle-repair: SFT on the reference solutions (no restarts), "
        "billed as if the teacher had written them", recipe=Recipe(source="reference")),
    Arm("sft-clean", "recipe", _BB, "SFT on the teacher's last attempt only: its text after its last restart mark "
        "(the whole text is bought and billed)", recipe=Recipe(clean=True)),
    Arm("sft-then-dagger", "recipe", _BB, "SFT on the first half of the final budget, then black-box DAgger "
        "(omniopd-dagger-n1) on the rest", recipe=Recipe(sft_share=0.5, then="omniopd-dagger-n1")),
    Arm("omniopd", "pipeline", _BB, "OmniOPD, --method omniopd's default signal (N, C, M at the lab's scale)"),
    Arm("omniopd-paper", "pipeline", _BB, "the paper's loss, pinned: no baseline, no imitation, phi=embedding", _PAPER),
    Arm("omniopd-uniform", "pipeline", _BB, "ablation: chunks spread uniformly", {**_PAPER, "scheduler.selection": "uniform"}),
    Arm("omniopd-alpha0", "pipeline", _BB, "ablation: no Dirichlet smoothing (alpha=0)", {**_PAPER, "scorer.alpha": 0.0}),
    Arm("omniopd-beta0", "pipeline", _BB, "ablation: no KL anchor (beta=0)", {**_PAPER, "learner.beta": 0.0}),
    Arm("omniopd-edit", "pipeline", _BB, "phi = normalised edit distance", {**_PAPER, "scorer.similarity": "edit"}),
    Arm("omniopd-rouge1", "pipeline", _BB, "phi = ROUGE-1 F1", {**_PAPER, "scorer.similarity": "rouge1"}),
    # the other methods of the same pipeline (issue 6; docs in the README's Methods section)
    Arm("opd-pipeline", "pipeline", _WB, "standard OPD in omniopd's learner: A_t = log pi_T - log pi_old, no KL anchor",
        {"method.name": "opd"}),
    Arm("sg-opd", "pipeline", _WB, "SG-OPD: sign gate 1.8/1.0 by math-verify verdicts + verified teacher rows at cold start",
        {"method.name": "sg-opd"}),
    Arm("tropd", "pipeline", _WB, "TrOPD: Bernoulli trust, forward KL on outliers (teacher top-64), teacher-prefix guidance",
        {"method.name": "tropd"}),
    Arm("omniopd-2upd", "pipeline", _BB, "OmniOPD, 2 updates per batch of rollouts (no gate): the gate's control",
        {**_PAPER, "learner.updates_per_batch": 2}),
    Arm("omniopd-2upd-gated", "pipeline", _BB, "OmniOPD, 2 updates per batch + blockwise policy-drift gate (64 tokens)",
        {**_PAPER, "learner.updates_per_batch": 2, "method.drift_gate": "block"}),
    Arm("omniopd-verifier-gate", "pipeline", _BB, "OmniOPD with chunk weights scaled by math-verify verdicts (x1.8 / x0.5)",
        {**_PAPER, "method.verifier_gate": True}),
    # issue 9's signals (README, Methods): a baseline for pi_hat, fork imitation, drafts, phi
    Arm("omniopd-group", "pipeline", _BB, "pi_hat minus its group mean (the G completions of a prompt)",
        {**_PAPER, "method.pihat_baseline": "group"}),
    Arm("omniopd-loo", "pipeline", _BB, "pi_hat minus the leave-one-out mean of its group",
        {**_PAPER, "method.pihat_baseline": "loo"}),
    Arm("omniopd-imitate", "pipeline", _BB, "+ CE on the teacher's continuations at the student's forks (chunk length)",
        {**_PAPER, "method.fork_imitation": 1.0}),
    Arm("omniopd-imitate-end", "pipeline", _BB, "+ CE on teacher continuations to the end of the answer (black-box DAgger)",
        {**_PAPER, "method.fork_imitation": 1.0, "teacher.token_factor": 4.0}),
    Arm("omniopd-drafts", "pipeline", _BB, "K=4 student drafts per fork ranked by phi, group-relative advantages",
        {**_PAPER, "method.student_drafts": 4}),
    Arm("omniopd-numbers", "pipeline", _BB, "phi = agreement on the numbers (and the final answer)",
        {**_PAPER, "scorer.similarity": "numbers"}),
    Arm("omniopd-tokenf1", "pipeline", _BB, "phi = token-level F1 on the student's tokenizer",
        {**_PAPER, "scorer.similarity": "token_f1"}),
    Arm("omniopd-loo-numbers", "pipeline", _BB, "leave-one-out baseline + phi = numbers",
        {**_PAPER, "method.pihat_baseline": "loo", "scorer.similarity": "numbers"}),
    Arm("omniopd-loo-imitate-numbers", "pipeline", _BB, "leave-one-out baseline + fork imitation + phi = numbers",
        {**_PAPER, "method.pihat_baseline": "loo", "method.fork_imitation": 1.0, "scorer.similarity": "numbers"}),
    Arm("omniopd-dagger-n1", "pipeline", _BB,
        "black-box DAgger: leave-one-out + imitation to the end (w=2) + phi = numbers, N=1 teacher sample per fork",
        _DAGGER1),
    Arm("omniopd-dagger-n2", "pipeline", _BB,
        "black-box DAgger: leave-one-out + imitation to the end (w=2) + phi = numbers, N=2 teacher samples per fork",
        {**_PAPER, "method.pihat_baseline": "loo", "method.fork_imitation": 2.0, "teacher.token_factor": 4.0,
         "scorer.similarity": "numbers", "teacher.samples": 2}),
    Arm("omniopd-loo-imitate-end-numbers", "pipeline", _BB,
        "leave-one-out baseline + imitation to the end (DAgger) + phi = numbers",
        {**_PAPER, "method.pihat_baseline": "loo", "method.fork_imitation": 1.0, "teacher.token_factor": 4.0,
         "scorer.similarity": "numbers"}),
    # more optimizer steps per bought token: the SFT arm trains twice on every solution it buys
    Arm("omniopd-x2", "pipeline", _BB, "omniopd train's default signal (N at the lab's scale), 2 updates per batch of rollouts (PPO-clipped)",
        {"learner.updates_per_batch": 2}),
    Arm("omniopd-dagger-n1-x2", "pipeline", _BB, "black-box DAgger at N=1 (omniopd-dagger-n1), 2 updates per batch of rollouts",
        {**_DAGGER1, "learner.updates_per_batch": 2}),
    Arm("omniopd-dagger-n1-beta0", "pipeline", _BB, "black-box DAgger at N=1 (omniopd-dagger-n1) without the KL anchor (beta=0)",
        {**_DAGGER1, "learner.beta": 0.0}),
    Arm("omniopd-imitate-only", "pipeline", _BB,
        "pure black-box DAgger: imitation to the end (w=2), N=1, the pi_hat term off (--pihat-weight 0)",
        {**_DAGGER1, "method.pihat_baseline": "none", "method.pihat_weight": 0.0}),
    Arm("omniopd-n4-x4", "pipeline", _BB,
        "the default signal with N=4 teacher samples per fork and 4 updates per batch of rollouts",
        {"teacher.samples": 4, "learner.updates_per_batch": 4}),
]}


@dataclass(frozen=True)
class Budget:
    """Where an arm is measured: milestones in teacher output tokens (the lab's historical
    unit) or in dollars (`unit="usd"`, every call priced by the named card). Records carry the
    milestone under `budget_tokens` or `budget_usd`, and always `teacher_usd` beside the tokens."""

    milestones: tuple[float, ...]
    unit: str = "tokens"  # "tokens" | "usd"
    card: str = DEFAULT_CARD

    @property
    def key(self) -> str:
        return "budget_usd" if self.unit == "usd" else "budget_tokens"

    def __post_init__(self) -> None:
        if self.unit not in ("tokens", "usd"):
            raise ValueError(f"budget unit {self.unit!r}: tokens or usd")


class Milestones:
    """Measures the student each time the teacher spend crosses a budget milestone.

    The arm sets `spend` (a callable returning its running `Spend`); `check(model, step)` is
    called after every optimizer step and appends a record for every milestone reached (the
    same measurement for milestones crossed on one step). `done` once the last milestone is
    reached; `finish` records whatever milestones a capped run never reached (with what it did
    spend)."""

    def __init__(self, ctx, arm: Arm, seed: int, lr: float, budget: Budget, t0: float,
                 spend: Callable[[], Spend] | None = None):
        self.ctx, self.arm, self.seed, self.lr, self.budget, self.t0 = ctx, arm, seed, lr, budget, t0
        self.budgets = list(budget.milestones)
        self.card = price_card(budget.card)
        self.spend: Callable[[], Spend] = spend or Spend
        self.records: list[dict] = []
        self.extra: dict[str, Any] = {}

    def spent(self) -> float:
        """The spend so far in the budget's unit."""
        sp = self.spend()
        return sp.usd(self.card) if self.budget.unit == "usd" else sp.teacher_tokens

    @property
    def next_budget(self) -> float:
        return self.budgets[min(len(self.records), len(self.budgets) - 1)]

    @property
    def done(self) -> bool:
        return len(self.records) >= len(self.budgets)

    def spend_fields(self) -> dict[str, Any]:
        sp = self.spend()
        return {"teacher_tokens": sp.teacher_tokens, "teacher_input_tokens": sp.input_tokens,
                "teacher_output_tokens": sp.output_tokens, "teacher_calls": sp.calls,
                "teacher_usd": sp.usd(self.card), "price_card": self.card.name}

    def base_record(self, b: float) -> dict[str, Any]:
        return {"arm": self.arm.name, "access": self.arm.access, "task": self.ctx.task, "seed": self.seed,
                self.budget.key: b, "budget_unit": self.budget.unit}

    def _record(self, model, step: int, reached: bool) -> None:
        spent = self.spent()
        pending = [b for b in self.budgets[len(self.records):] if spent >= b or not reached]
        if not pending:
            return
        train_s = time.perf_counter() - self.t0
        m = self.ctx.measure(model, self.seed, dev=len(self.records) + len(pending) >= len(self.budgets))
        fields = self.spend_fields()
        for b in pending:
            self.records.append({**self.base_record(b), **fields, "steps": step, "lr": self.lr, "train_s": train_s,
                                 "budget_reached": spent >= b, **m,
                                 **({"extra": dict(self.extra)} if self.extra else {})})
        self.t0 += time.perf_counter() - self.t0 - train_s  # measuring does not count as training time

    def check(self, model, step: int) -> None:
        if not self.done and self.spent() >= self.budgets[len(self.records)]:
            self._record(model, step, reached=True)

    def finish(self, model, step: int) -> None:
        if not self.done:
            self._record(model, step, reached=False)


class MilestoneCallback(TrainerCallback):
    """The TRL hook: measure at milestones after each step, stop after the last one (or once
    `stop_at` is spent: a phase of a schedule)."""

    def __init__(self, ms: Milestones, model, stop_at: float | None = None):
        self.ms, self.model, self.stop_at = ms, model, stop_at

    def on_step_end(self, args, state, control, **kwargs):
        self.ms.check(self.model, state.global_step)
        if self.ms.done or (self.stop_at is not None and self.ms.spent() >= self.stop_at):
            control.should_training_stop = True
        return control


# --- arms -----------------------------------------------------------------------------------
def run_arm(arm: Arm, ctx, seed: int, lr: float, budgets: list[float] | Budget,
            noise_l2: dict[float, float] | None = None) -> list[dict]:
    """One arm x seed from the task's start; one record per budget milestone. `budgets` is a
    `Budget`, or a plain list of token milestones (the lab's historical unit)."""
    budget = budgets if isinstance(budgets, Budget) else Budget(tuple(budgets))
    student = ctx.fresh_student()
    t0 = time.perf_counter()
    ms = Milestones(ctx, arm, seed, lr if arm.kind not in ("none", "noise") else 0.0, budget, t0)
    if arm.kind == "none":
        m = ctx.measure(student.eval(), seed, dev=True)
        ms.records = [{**ms.base_record(b), **ms.spend_fields(), "steps": 0, "lr": 0.0, "train_s": 0.0,
                       "budget_reached": True, **m} for b in ms.budgets]
        return ms.records
    if arm.kind == "noise":
        return _noise(ctx, student, seed, ms, noise_l2 or {})
    torch.manual_seed(seed)
    random.seed(seed)
    if arm.kind == "recipe":
        from bench.lab.recipes import run_recipe

        return run_recipe(arm, ctx, student, seed, lr, ms)
    if arm.kind == "opd":
        return _opd(ctx, student, seed, lr, ms)
    if arm.kind == "pipeline":
        return pipeline_arm(arm.overrides, ctx, student, seed, lr, ms, name=arm.name)
    raise ValueError(f"unknown arm kind {arm.kind!r}")


def _noise(ctx, student, seed: int, ms: Milestones, noise_l2: dict[float, float]) -> list[dict]:
    """Per milestone: the start plus a fixed random direction scaled to that milestone's L2."""
    gen = torch.Generator().manual_seed(50_000 + seed)
    start = ctx.start_state
    direction = {k: torch.randn(v.shape, generator=gen) for k, v in start.items() if v.is_floating_point()}
    norm = sum(float(d.pow(2).sum()) for d in direction.values()) ** 0.5
    records = []
    for b in ms.budgets:
        l2 = noise_l2.get(b, 0.0)
        state = {k: (v + direction[k] * (l2 / norm) if k in direction else v) for k, v in start.items()}
        student.load_state_dict(state)
        m = ctx.measure(student.eval(), seed, dev=b == ms.budgets[-1])
        records.append({**ms.base_record(b), **ms.spend_fields(), "steps": 0, "lr": 0.0, "train_s": 0.0,
                        "budget_reached": True, "noise_l2_target": l2, **m})
    return records


def _opd(ctx, student, seed: int, lr: float, ms: Milestones) -> list[dict]:
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
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
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, max_completion_length=s.max_new_tokens,
        temperature=1.0, beta=1.0, gradient_checkpointing=False, bf16=False, use_cpu=True, logging_steps=10**9,
        save_strategy="no", report_to=[], seed=seed, data_seed=seed, disable_tqdm=True, max_grad_norm=1.0,
    )
    rows = [{"prompt": [{"role": "user", "content": p.question}]} for p in ctx.train]
    ms.spend = lambda: Spend(scored_tokens=float(CountingDistillationTrainer.scored))
    trainer = CountingDistillationTrainer(
        model=student, teacher_model=ctx.teacher, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=ctx.tokenizer, callbacks=[MilestoneCallback(ms, student)],
    )
    trainer.remove_callback(PrinterCallback)  # one dict per step on stdout otherwise
    trainer.train()
    ms.finish(student, trainer.state.global_step)
    shutil.rmtree(out, ignore_errors=True)
    return ms.records


def pipeline_config(ctx, seed: int, lr: float, name: str, overrides: dict[str, Any]):
    """The `omniopd train` configuration of a pipeline arm (raises ConfigError on an unknown key)."""
    from omniopd.config import build_config

    s = ctx.scale
    base = {
        "method.name": "omniopd",  # the pipeline's arms (an arm's overrides may name another method)
        "student.model": "lab-student",
        "student.generations": s.generations,
        "student.max_new_tokens": s.max_new_tokens,
        "teacher.spec": "local:lab-teacher",
        "teacher.samples": s.teacher_samples,
        "data.path": str(ctx.train_jsonl),
        "data.answer_field": "answer",
        "scheduler.chunk_tokens": s.chunk_tokens,
        "scheduler.chunks_per_completion": s.chunks_per_completion,
        "learner.learning_rate": lr,
        "learner.prompts_per_step": s.prompts_per_step,
        "learner.max_steps": s.max_arm_steps,
        "learner.seed": seed,
        "output.dir": str(ctx.workdir / f"{name}-{seed}-lr{lr:g}"),
        "output.save_steps": 10**9,
        "output.save_total_limit": 1,
        # every arm pays for its own teacher samples: no sample cache shared across arms/seeds
        "cache.mode": "off",
        "cache.no_episodes": True,
    }
    return build_config(overrides={**base, **overrides})


def pipeline_arm(overrides: dict[str, Any], ctx, student, seed: int, lr: float, ms: Milestones, *, name: str,
                 before: Spend | None = None, step0: int = 0) -> list[dict]:
    """Train through omniopd's real entry point with the teacher behind the provider interface.

    Its spend is what the local teacher reports (input: prompt + the student's prefix at every
    fork, in the lab tokenizer; output: the teacher's tokens; white-box: scored tokens), plus
    `before` (what an earlier phase of a schedule bought); `step0` its optimizer steps."""
    from omniopd.train import run_train

    cfg = pipeline_config(ctx, seed, lr, name, overrides)
    shutil.rmtree(cfg.output.dir, ignore_errors=True)
    teacher = ctx.local_teacher()
    base = before or Spend()
    ms.spend = lambda: base.plus(Spend.of_usage(teacher.usage_totals()))

    class Offset(MilestoneCallback):
        def on_step_end(self, args, state, control, **kwargs):
            self.ms.check(self.model, step0 + state.global_step)
            if self.ms.done:
                control.should_training_stop = True
            return control

    result = run_train(cfg, model=student, tokenizer=ctx.tokenizer, teacher=teacher, phi=ctx.phi(cfg.scorer.similarity),
                       extra_callbacks=[Offset(ms, student)], echo=False)
    ms.extra = {**ms.extra, "teacher_samples": result.teacher_samples}
    ms.finish(student, step0 + result.steps)
    for r in ms.records:
        r.setdefault("extra", {})["metrics"] = str(cfg.output.dir) + "/metrics.jsonl"
    return ms.records
