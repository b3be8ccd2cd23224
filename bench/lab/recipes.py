"""The SFT family of recipes: buy teacher solutions, add what the student's own samples give.

One loop (`run_recipe`) runs every recipe of issue 18 from the task's start, round by round:

1. take the next problems (64 at a time, cycling through the shuffled training split; never
   more than the next milestone can pay for, so a milestone is overshot by < one purchase);
2. if the recipe uses them, sample the student k times per problem (temperature 1) and verify
   each sample's final answer (free: the student is ours, the verifier is exact);
3. buy what the recipe buys, through the provider interface, priced by the budget's card:
   - `sft`: a teacher solution for every problem;
   - gated (`sft-gated*`): a teacher solution only where all k samples fail
     (`selection.gate_P`); the student's first correct sample is a free target (one per
     problem, as SFT has one solution per problem: the recipe changes where a target comes
     from, not how many updates a problem gets; k near-identical correct samples of one
     problem would multiply the steps per dollar and the CPU time by up to k);
   - `oracle-repair`: no teacher; a wrong sample's first wrong step is corrected from the
     reference (`selection.oracle_repair`) and billed as the minimal-repair request an API
     teacher would answer (input: prompt + the student's answer; output: the corrected rest);
4. train `sft_reuse` passes over the round's positives (cross-entropy, SFT's exact term) and,
   with `negatives`, a DPO term pairing each verifier-wrong sample with its problem's preferred
   answer (`losses.dpo_loss_B`; the reference is the student at the round's start, a frozen
   snapshot whose log-probabilities are computed once per round);
5. measure at every milestone crossed (`arms.Milestones`).

With `sft_share < 1` the loop stops after that share of the final budget and the `then` arm
(an `omniopd train` configuration, e.g. black-box DAgger) spends the rest on the same student:
the SFT-first schedule. Plain SFT (no sampling, no negatives) takes exactly the path the lab's
SFT arm always took, so its rows stay comparable with earlier runs' at equal tokens.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass

import torch

from bench.lab import losses, measure, nets, selection
from bench.lab.dollars import Spend


@dataclass(frozen=True)
class Recipe:
    """What the loop buys and trains on (see the module docstring)."""

    gated: bool = False
    negatives: bool = False
    oracle_repair: bool = False
    samples: int = 4  # k student samples per problem (gating, negatives); oracle-repair repairs the first
    free_per_problem: int = 1  # gated: the student's correct samples kept per gated-out problem (one, like SFT's one solution)
    beta: float = 0.1  # DPO temperature
    neg_weight: float = 1.0  # weight of the DPO term beside the cross-entropy
    sft_share: float = 1.0  # share of the final budget this loop spends; the `then` arm spends the rest
    then: str | None = None  # the on-policy arm (a name in arms.ARMS) after the SFT phase
    clean: bool = False  # train on the teacher's last attempt only (the text after its last restart mark)
    source: str = "teacher"  # "teacher": solutions bought from the teacher; "reference": the reference
    # solutions, billed as if the teacher had written them (a control: clean text without restarts)

    @property
    def samples_student(self) -> bool:
        return self.gated or self.negatives or self.oracle_repair


def buy_solutions(ctx, questions: list[str]) -> list[tuple[str, str, float, float]]:
    """Whole solutions from the teacher as text via the provider interface, one request each:
    (question, text, input tokens, output tokens) as the provider reports them."""
    from providers.base import Message, TeacherRequest

    teacher = ctx.local_teacher()

    async def batch():
        reqs = [TeacherRequest((Message("user", q),), "", 1, ctx.scale.max_new_tokens, temperature=1.0) for q in questions]
        return await asyncio.gather(*(teacher.sample(r) for r in reqs))

    out = []
    for q, s in zip(questions, asyncio.run(batch())):
        if s:  # an empty answer is not a sample (providers.validation); the local teacher bills nothing for it
            out.append((q, s[0].text.strip(), float(s[0].input_tokens), float(s[0].output_tokens)))
    return out


@dataclass
class Round:
    """One round's training data: positives (CE) and (preferred, wrong) pairs (DPO)."""

    positives: list[tuple[str, str]]
    pairs: list[tuple[str, str, str]]  # (question, preferred, wrong)
    bought: int = 0
    free: int = 0
    repairs: int = 0
    gated_out: int = 0


def _token_len(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def build_round(ctx, recipe: Recipe, problems: list, samples_PK: list[list[str]] | None, spend: Spend) -> Round:
    """Buy what `recipe` buys for `problems` (adding it to `spend`) and assemble the round's
    data; `samples_PK` are the student's k samples per problem (None when not sampled)."""
    tok = ctx.tokenizer
    rnd = Round([], [])
    correct_PK = ([[measure.answer_of(t) == p.answer for t in row] for p, row in zip(problems, samples_PK)]
                  if samples_PK is not None else None)
    preferred: dict[int, str] = {}  # per problem: the answer a negative is paired against
    free_at: set[int] = set()
    if recipe.oracle_repair:
        assert samples_PK is not None and correct_PK is not None
        for i, (p, row, ok) in enumerate(zip(problems, samples_PK, correct_PK)):
            if ok[0]:
                preferred[i] = row[0]
                rnd.free += 1
                continue
            prefix, rest = selection.oracle_repair(row[0], p.solution) or ("", p.solution)
            target = selection.join_repair(prefix, rest)
            prompt = _token_len(tok, nets.prompt_text(tok, p.question))
            spend.add(prompt + _token_len(tok, row[0]), _token_len(tok, rest) + 1)  # + the EOS
            preferred[i] = target
            rnd.repairs += 1
    else:
        buy = selection.gate_P(correct_PK) if recipe.gated and correct_PK is not None else [True] * len(problems)
        for i, b in enumerate(buy):
            if not b:
                free = selection.free_targets(samples_PK[i], correct_PK[i])[:recipe.free_per_problem]
                rnd.positives += [(problems[i].question, t) for t in free]
                preferred[i] = free[0]
                free_at.add(i)
                rnd.free += len(free)
                rnd.gated_out += 1
        want = [i for i, b in enumerate(buy) if b]
        if recipe.source == "reference":
            got = [(problems[i].question, problems[i].solution,
                    float(_token_len(tok, nets.prompt_text(tok, problems[i].question))),
                    float(_token_len(tok, problems[i].solution) + 1)) for i in want]
        else:
            got = buy_solutions(ctx, [problems[i].question for i in want])
        for q, text, n_in, n_out in got:
            spend.add(n_in, n_out)  # the whole text is billed, cleaned or not
        if recipe.clean:
            got = [(q, selection.after_restart(text), n_in, n_out) for q, text, n_in, n_out in got]
        by_q = {q: text for q, text, _, _ in got}
        rnd.bought = len(got)
        for i in want:
            if problems[i].question in by_q:
                preferred[i] = by_q[problems[i].question]
    for i in sorted(preferred):
        if i not in free_at:  # a gated-out problem's free targets are in already
            rnd.positives.append((problems[i].question, preferred[i]))
    if recipe.negatives and correct_PK is not None:
        for i, (p, row, ok) in enumerate(zip(problems, samples_PK, correct_PK)):
            if i in preferred:
                rnd.pairs += [(p.question, preferred[i], neg) for neg in selection.negatives_of(row, ok)]
    return rnd


@torch.no_grad()
def _ref_logprobs(model, data: list[tuple[list[int], list[int]]], pad_id: int, batch: int = 64) -> list[float]:
    was = model.training
    model.eval()
    out: list[float] = []
    for b in range(0, len(data), batch):
        c = nets.collate(data[b:b + batch], pad_id)
        out += losses.sequence_logprobs_B(model(input_ids=c["input_ids"], attention_mask=c["attention_mask"]).logits,
                                          c["labels"]).tolist()
    model.train(was)
    return out


def recipe_step(model, opt, sched, pos: list, pairs: list, ref: list[tuple[float, float]], pad_id: int, recipe: Recipe) -> dict:
    """One optimizer step: CE on `pos` (+ neg_weight x mean DPO over `pairs`), one forward."""
    rows = list(pos) + [p for p, _ in pairs] + [n for _, n in pairs]
    c = nets.collate(rows, pad_id)
    logits = model(input_ids=c["input_ids"], attention_mask=c["attention_mask"]).logits
    P = len(pos)
    loss = losses.ce_loss(logits[:P], c["labels"][:P])
    out = {"ce": float(loss.detach())}
    if pairs:
        K = len(pairs)
        seq = losses.sequence_logprobs_B(logits[P:], c["labels"][P:])
        ref_t = torch.tensor(ref, dtype=seq.dtype)
        dpo = losses.dpo_loss_B(seq[:K], seq[K:], ref_t[:, 0], ref_t[:, 1], recipe.beta).mean()
        loss = loss + recipe.neg_weight * dpo
        out["dpo"] = float(dpo.detach())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return out


def run_recipe(arm, ctx, student, seed: int, lr: float, ms) -> list[dict]:
    """The loop of the module docstring for `arm.recipe`; `ms` is the arm's `arms.Milestones`.
    Constant learning rate after a 10-step warm-up, like the on-policy arms."""
    recipe: Recipe = arm.recipe
    s = ctx.scale
    tok = ctx.tokenizer
    rng = random.Random(seed)
    spend = Spend()
    ms.spend = lambda: spend
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: min(1.0, (st + 1) / 10))
    phase_end = recipe.sft_share * ms.budgets[-1]
    # the most one problem can cost (the next purchase is sized so a milestone is overshot by less)
    max_prompt = max(_token_len(tok, nets.prompt_text(tok, p.question)) for p in ctx.train)
    if ms.budget.unit == "usd":
        per_item = ms.card.call_usd(max_prompt + (s.max_new_tokens if recipe.oracle_repair else 0), s.max_new_tokens)
    else:
        per_item = float(s.max_new_tokens)
    order: list[int] = []
    step = 0
    tally = {"solutions": 0, "free_targets": 0, "repairs": 0, "gated_out": 0, "negatives": 0, "problems": 0}
    losses_seen: dict[str, float] = {}
    student.train()
    while not ms.done and step < s.max_arm_steps and ms.spent() < phase_end:
        if len(order) < 64:
            more = list(range(len(ctx.train)))
            rng.shuffle(more)
            order += more
        target = min(ms.budgets[len(ms.records)], phase_end)
        n = min(64, max(1, int((target - ms.spent()) // per_item)))
        idx, order = order[:n], order[n:]
        problems = [ctx.train[i] for i in idx]
        samples = None
        if recipe.samples_student:
            k = 1 if recipe.oracle_repair else recipe.samples
            g = measure.generate(student, tok, [p.question for p in problems for _ in range(k)], temperature=1.0,
                                 max_new_tokens=s.max_new_tokens, batch_size=max(s.eval_batch, 256),
                                 seed=rng.randrange(2**31))
            samples = [g.texts[j * k:(j + 1) * k] for j in range(len(problems))]
        rnd = build_round(ctx, recipe, problems, samples, spend)
        for key, v in (("solutions", rnd.bought), ("free_targets", rnd.free), ("repairs", rnd.repairs),
                       ("gated_out", rnd.gated_out), ("negatives", len(rnd.pairs)), ("problems", len(problems))):
            tally[key] += v
        data = nets.encode_pairs(tok, rnd.positives)
        pair_data = [(a, b) for a, b in zip(nets.encode_pairs(tok, [(q, p) for q, p, _ in rnd.pairs]),
                                            nets.encode_pairs(tok, [(q, w) for q, _, w in rnd.pairs]))]
        ref: list[tuple[float, float]] = []
        if pair_data:  # the snapshot: the student before this round's updates
            lp_pos = _ref_logprobs(student, [a for a, _ in pair_data], tok.pad_token_id)
            lp_neg = _ref_logprobs(student, [b for _, b in pair_data], tok.pad_token_id)
            ref = list(zip(lp_pos, lp_neg))
        n_steps = max(1, math.ceil(s.sft_reuse * len(data) / s.arm_batch)) if data else 0
        for _ in range(n_steps):
            pos = [data[i] for i in rng.sample(range(len(data)), min(s.arm_batch, len(data)))]
            pick = rng.sample(range(len(pair_data)), min(s.arm_batch, len(pair_data))) if pair_data else []
            out = recipe_step(student, opt, sched, pos, [pair_data[i] for i in pick], [ref[i] for i in pick],
                              tok.pad_token_id, recipe)
            losses_seen = {k: 0.9 * losses_seen.get(k, v) + 0.1 * v for k, v in out.items()}
            step += 1
        ms.extra = {**tally, **{f"loss_{k}": round(v, 4) for k, v in losses_seen.items()}}
        before = len(ms.records)
        ms.check(student, step)
        if len(ms.records) > before:
            r = ms.records[-1]
            print(f"[recipe {time.strftime('%H:%M:%S')}] {arm.name} milestone {r.get(ms.budget.key)}: "
                  f"acc {r['accuracy']:.3f} step {step} {tally}", flush=True)
    if recipe.then is not None and not ms.done and step < s.max_arm_steps:
        from bench.lab.arms import ARMS, pipeline_arm

        ms.extra = {**ms.extra, "phase2_from_step": step, "phase2_from_usd": spend.usd(ms.card)}
        return pipeline_arm(ARMS[recipe.then].overrides, ctx, student, seed, lr, ms, name=arm.name,
                            before=Spend(spend.input_tokens, spend.output_tokens, spend.cache_read_tokens,
                                         spend.scored_tokens, spend.calls), step0=step)
    ms.finish(student, step)
    return ms.records
