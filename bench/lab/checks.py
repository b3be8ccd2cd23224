"""The instrument checks: is this lab able to tell a good method from a bad one?

Run before any arm (teacher accuracy, teacher recovery, the student's start) and after the
control arms (positive control); each returns `{"figure": ..., "passed": bool, ...}` and the
lab stops when one fails, because a table built on a failed check would mean nothing:

- `teacher_accuracy`: the teacher's greedy held-out accuracy >= `scale.teacher_min`, with its
  temperature-1 accuracy and how often its own temperature-1 solutions restart (the price of a
  teacher that repairs: the SFT arm buys those solutions as they are).
- `teacher_recovery`: the teacher's final-answer accuracy (temperature 1, as the arms sample it)
  when it continues the start student's own temperature-1 rollouts cut at the student's forks
  (its highest-entropy tokens, where OmniOPD's scheduler cuts), split into clean prefixes (equal
  to the start of the reference solution) and flawed ones (already holding a deviation the
  teacher must repair). Passes when both reach `scale.recovery_min` (flawed: when any exist).
- `start_accuracy`: the start's greedy held-out accuracy inside `scale.start_band` (a mid-level
  student), with its temperature-1 accuracy beside it.
- `positive_control`: white-box OPD and SFT on teacher solutions each beat no-training by more
  than 2 standard errors (over seeds) at the lab's budget: the lab can see a method that works.
"""

from __future__ import annotations

import torch

from bench.lab import measure, tasks
from bench.lab.report import budget_of, mean_se


def teacher_accuracy(ctx) -> dict:
    s = ctx.scale
    acc = ctx.accuracy(ctx.teacher, ctx.test)
    g = measure.generate(ctx.teacher, ctx.tokenizer, [p.question for p in ctx.test], temperature=1.0, seed=1,
                         max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch)
    t1 = measure.accuracy(g.texts, [p.answer for p in ctx.test])
    restarts = sum(tasks.RESTART in t.split(" ") for t in g.texts) / max(1, len(g.texts))
    return {"figure": acc, "accuracy_t1": t1, "restarts_t1": restarts, "threshold": s.teacher_min,
            "passed": acc >= s.teacher_min}


def start_accuracy(ctx) -> dict:
    lo, hi = ctx.scale.start_band
    acc = ctx.accuracy(ctx.start, ctx.test)
    t1 = ctx.accuracy(ctx.start, ctx.test, temperature=1.0, seed=1)
    return {"figure": acc, "accuracy_t1": t1, "band": [lo, hi], "passed": lo <= acc <= hi}


@torch.no_grad()
def teacher_recovery(ctx, n: int | None = None, forks_per_completion: int = 2, seed: int = 0) -> dict:
    s = ctx.scale
    probs = ctx.test[: n or s.recovery_n]
    tok = ctx.tokenizer
    qs = [p.question for p in probs]
    g = measure.generate(ctx.start, tok, qs, max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch,
                         temperature=1.0, seed=seed)
    lps = measure.token_logprobs(ctx.start, g.prompt_ids, g.completion_ids, tok.pad_token_id)
    fork_q, fork_prefix, fork_clean, fork_ans = [], [], [], []
    for p, ids, lp in zip(probs, g.completion_ids, lps):
        body = [t for t in ids if t != tok.eos_token_id]
        if not body:
            continue
        ent = -(lp[: len(body)].exp() * lp[: len(body)]).sum(-1)
        forks = torch.topk(ent, min(forks_per_completion, len(body))).indices.tolist()
        ref = p.solution.split(" ")
        for pos in forks:
            prefix = tok.decode(body[:pos], skip_special_tokens=True) if pos else ""
            words = prefix.split(" ") if prefix else []
            fork_q.append(p.question)
            fork_prefix.append(prefix)
            fork_clean.append(words == ref[: len(words)])
            fork_ans.append(p.answer)
    cont = measure.generate(ctx.teacher, tok, fork_q, max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch,
                            temperature=1.0, prefixes=fork_prefix, seed=seed + 1)
    ok = [measure.answer_of(f"{pre} {c}") == a for pre, c, a in zip(fork_prefix, cont.texts, fork_ans)]
    clean = [o for o, c in zip(ok, fork_clean) if c]
    flawed = [o for o, c in zip(ok, fork_clean) if not c]
    rate = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    fig, rc, rf = rate(ok), rate(clean), rate(flawed)
    passed = fig >= s.recovery_min and (not flawed or rf >= s.recovery_flawed_min)
    return {"figure": fig, "clean": rc, "flawed": rf, "n_forks": len(ok), "n_flawed": len(flawed),
            "threshold": s.recovery_min, "threshold_flawed": s.recovery_flawed_min, "passed": passed}


def before_arms(ctx) -> dict:
    return {"teacher_accuracy": teacher_accuracy(ctx), "teacher_recovery": teacher_recovery(ctx),
            "start_accuracy": start_accuracy(ctx)}


def positive_control(records: list[dict], task: str, budget: int, start_acc: float,
                     arms: tuple[str, ...] = ("sft", "opd")) -> dict:
    """Each control arm's mean greedy accuracy at the full budget minus the start, in s.e."""
    out: dict = {"passed": True, "arms": {}}
    for arm in arms:
        accs = [r["accuracy"] for r in records if r["arm"] == arm and r["task"] == task and budget_of(r) == budget]
        if not accs:
            out["arms"][arm] = {"passed": False, "why": "not run"}
            out["passed"] = False
            continue
        m, se = mean_se(accs)
        ok = len(accs) > 1 and m - start_acc > 2 * se
        out["arms"][arm] = {"accuracy": m, "se": se, "gain": m - start_acc, "seeds": len(accs), "passed": ok}
        out["passed"] = out["passed"] and ok
    out["figure"] = min((a.get("gain", float("-inf")) for a in out["arms"].values()), default=float("nan"))
    return out
