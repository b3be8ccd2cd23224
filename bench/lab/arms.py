"""The lab's arms: ways to spend one teacher budget on a student, and the ARMS table.

Every arm x seed starts from a copy of the task's start student, with the same teacher and the
same budget of teacher output tokens, and is measured at budget milestones along the way (a
learning curve from one run): held-out greedy and temperature-1 accuracy, the KL from the start
and how far the weights moved. The teacher is used two ways:

- as text, through the provider interface only (`providers.local.LocalTeacher`), exactly as an
  API teacher would be (access "black-box"): the SFT arm buys whole solutions (several per
  problem when the budget asks for more than one pass), the OmniOPD arms ask it, via omniopd's
  real training entry point `omniopd.train.run_train`, to continue the student's prefixes.
  Teacher tokens = the output tokens the provider reports.
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


@dataclass(frozen=True)
class Arm:
    name: str
    kind: str  # "none" | "noise" | "sft" | "opd" | "pipeline"
    access: str  # "none" | "black-box" | "white-box"
    help: str
    overrides: dict[str, Any] = field(default_factory=dict)


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
    Arm("sft", "sft", _BB, "SFT on teacher-written solutions (teacher as text, whole answers, bought as it trains)"),
    Arm("opd", "opd", _WB, "white-box on-policy distillation: TRL DistillationTrainer, reverse KL to teacher logits"),
    Arm("omniopd", "pipeline", _BB, "OmniOPD, omniopd train's default signal (N, C, M at the lab's scale)"),
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


class Milestones:
    """Measures the student each time the teacher spend crosses a budget milestone.

    `check(model, step)` is called after every optimizer step; for every milestone reached it
    appends a record (the same measurement for milestones crossed on one step). `done` once the
    last milestone is reached; `finish` records whatever milestones a capped run never reached
    (with the tokens it did spend)."""

    def __init__(self, ctx, arm: Arm, seed: int, lr: float, budgets: list[int], spent: Callable[[], float],
                 t0: float):
        self.ctx, self.arm, self.seed, self.lr, self.budgets, self.spent, self.t0 = ctx, arm, seed, lr, budgets, spent, t0
        self.records: list[dict] = []
        self.extra: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        return len(self.records) >= len(self.budgets)

    def _record(self, model, step: int, reached: bool) -> None:
        spent = int(self.spent())
        pending = [b for b in self.budgets[len(self.records):] if spent >= b or not reached]
        if not pending:
            return
        train_s = time.perf_counter() - self.t0
        m = self.ctx.measure(model, self.seed, dev=len(self.records) + len(pending) >= len(self.budgets))
        for b in pending:
            self.records.append({"arm": self.arm.name, "access": self.arm.access, "task": self.ctx.task,
                                 "seed": self.seed, "budget_tokens": b, "teacher_tokens": spent, "steps": step,
                                 "lr": self.lr, "train_s": train_s, "budget_reached": spent >= b, **m,
                                 **({"extra": dict(self.extra)} if self.extra else {})})
        self.t0 += time.perf_counter() - self.t0 - train_s  # measuring does not count as training time

    def check(self, model, step: int) -> None:
        if not self.done and self.spent() >= self.budgets[len(self.records)]:
            self._record(model, step, reached=True)

    def finish(self, model, step: int) -> None:
        if not self.done:
            self._record(model, step, reached=False)


class MilestoneCallback(TrainerCallback):
    """The TRL hook: measure at milestones after each step, stop after the last one."""

    def __init__(self, ms: Milestones, model):
        self.ms, self.model = ms, model

    def on_step_end(self, args, state, control, **kwargs):
        self.ms.check(self.model, state.global_step)
        if self.ms.done:
            control.should_training_stop = True
        return control


# --- arms -----------------------------------------------------------------------------------
def run_arm(arm: Arm, ctx, seed: int, lr: float, budgets: list[int], noise_l2: dict[int, float] | None = None) -> list[dict]:
    """One arm x seed from the task's start; one record per budget milestone."""
    student = ctx.fresh_student()
    t0 = time.perf_counter()
    if arm.kind == "none":
        spent = lambda: 0  # noqa: E731
        ms = Milestones(ctx, arm, seed, 0.0, budgets, spent, t0)
        m = ctx.measure(student.eval(), seed, dev=True)
        ms.records = [{"arm": arm.name, "access": arm.access, "task": ctx.task, "seed": seed, "budget_tokens": b,
                       "teacher_tokens": 0, "steps": 0, "lr": 0.0, "train_s": 0.0, "budget_reached": True, **m}
                      for b in budgets]
        return ms.records
    if arm.kind == "noise":
        return _noise(arm, ctx, student, seed, budgets, noise_l2 or {})
    torch.manual_seed(seed)
    random.seed(seed)
    if arm.kind == "sft":
        return _sft(arm, ctx, student, seed, lr, budgets, t0)
    if arm.kind == "opd":
        return _opd(arm, ctx, student, seed, lr, budgets, t0)
    if arm.kind == "pipeline":
        return pipeline_arm(arm, ctx, student, seed, lr, budgets, t0)
    raise ValueError(f"unknown arm kind {arm.kind!r}")


def _noise(arm: Arm, ctx, student, seed: int, budgets: list[int], noise_l2: dict[int, float]) -> list[dict]:
    """Per milestone: the start plus a fixed random direction scaled to that milestone's L2."""
    gen = torch.Generator().manual_seed(50_000 + seed)
    start = ctx.start_state
    direction = {k: torch.randn(v.shape, generator=gen) for k, v in start.items() if v.is_floating_point()}
    norm = sum(float(d.pow(2).sum()) for d in direction.values()) ** 0.5
    records = []
    for b in budgets:
        l2 = noise_l2.get(b, 0.0)
        state = {k: (v + direction[k] * (l2 / norm) if k in direction else v) for k, v in start.items()}
        student.load_state_dict(state)
        m = ctx.measure(student.eval(), seed, dev=b == budgets[-1])
        records.append({"arm": arm.name, "access": arm.access, "task": ctx.task, "seed": seed, "budget_tokens": b,
                        "teacher_tokens": 0, "steps": 0, "lr": 0.0, "train_s": 0.0, "budget_reached": True,
                        "noise_l2_target": l2, **m})
    return records


def buy_solutions(ctx, questions: list[str]) -> list[tuple[str, str, int]]:
    """Whole solutions from the teacher as text via the provider interface: (q, text, tokens)."""
    from providers.base import Message, TeacherRequest

    teacher = ctx.local_teacher()

    async def batch():
        reqs = [TeacherRequest((Message("user", q),), "", 1, ctx.scale.max_new_tokens, temperature=1.0) for q in questions]
        return await asyncio.gather(*(teacher.sample(r) for r in reqs))

    return [(q, s[0].text.strip(), int(s[0].output_tokens)) for q, s in zip(questions, asyncio.run(batch()))]


def _sft(arm: Arm, ctx, student, seed: int, lr: float, budgets: list[int], t0: float) -> list[dict]:
    """SFT on teacher solutions bought as training goes (64 at a time, cycling through the
    shuffled training problems, so a budget larger than one pass buys several solutions per
    problem); each bought batch is trained on for `sft_reuse` passes. Constant learning rate
    after a 10-step warm-up, like the on-policy arms."""
    s = ctx.scale
    rng = random.Random(seed)
    spent = {"tokens": 0}
    ms = Milestones(ctx, arm, seed, lr, budgets, lambda: spent["tokens"], t0)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: min(1.0, (st + 1) / 10))
    order: list[int] = []
    step, bought = 0, 0
    student.train()
    while not ms.done and step < s.max_arm_steps:
        if len(order) < 64:
            more = list(range(len(ctx.train)))
            rng.shuffle(more)
            order += more
        # buy up to 64 at a time, never more than the next milestone can take (a solution has at
        # most max_new_tokens tokens), so a milestone is overshot by less than one solution
        n = min(64, max(1, (budgets[len(ms.records)] - spent["tokens"]) // s.max_new_tokens))
        idx, order = order[:n], order[n:]
        got = buy_solutions(ctx, [ctx.train[i].question for i in idx])
        spent["tokens"] += sum(t for _, _, t in got)
        bought += len(got)
        data = nets.encode_pairs(ctx.tokenizer, [(q, text) for q, text, _ in got])
        n_steps = max(1, math.ceil(s.sft_reuse * len(data) / s.arm_batch))
        for _ in range(n_steps):
            batch = nets.collate([data[i] for i in rng.sample(range(len(data)), min(s.arm_batch, len(data)))],
                                 ctx.tokenizer.pad_token_id)
            nets.train_step(student, opt, sched, batch)
            step += 1
        ms.extra = {"solutions": bought}
        ms.check(student, step)
    ms.finish(student, step)
    return ms.records


def _opd(arm: Arm, ctx, student, seed: int, lr: float, budgets: list[int], t0: float) -> list[dict]:
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
    ms = Milestones(ctx, arm, seed, lr, budgets, lambda: CountingDistillationTrainer.scored, t0)
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


def pipeline_arm(arm: Arm, ctx, student, seed: int, lr: float, budgets: list[int], t0: float) -> list[dict]:
    """Train through omniopd's real entry point with the teacher behind the provider interface."""
    from omniopd.train import run_train

    cfg = pipeline_config(ctx, seed, lr, arm.name, arm.overrides)
    shutil.rmtree(cfg.output.dir, ignore_errors=True)
    teacher = ctx.local_teacher()
    # teacher output tokens, plus the tokens a white-box method had the teacher score
    spent = lambda: teacher.usage_totals()["output_tokens"] + teacher.usage_totals().get("scored_tokens", 0.0)  # noqa: E731
    ms = Milestones(ctx, arm, seed, lr, budgets, spent, t0)
    result = run_train(cfg, model=student, tokenizer=ctx.tokenizer, teacher=teacher, phi=ctx.phi(cfg.scorer.similarity),
                       extra_callbacks=[MilestoneCallback(ms, student)], echo=False)
    ms.extra = {"teacher_samples": result.teacher_samples}
    ms.finish(student, result.steps)
    for r in ms.records:
        r.setdefault("extra", {})["metrics"] = str(cfg.output.dir) + "/metrics.jsonl"
    return ms.records
