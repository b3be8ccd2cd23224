"""Editing a batch of rollouts: teacher-written rows (SG-OPD), teacher-prefixed rows (TrOPD),
and rows appended after a fork (OmniOPD's fork imitation and student drafts).

All of them put completions the student did not sample (or sampled elsewhere) into the batch.
These helpers rebuild the padded (B, T) tensors around new token rows and record the student's
own log-probabilities on them (the behaviour log-probabilities the learner's ratio and the drift
gate compare with), from one no-grad forward of the student.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from omniopd.models import eos_token_ids
from omniopd.rollouts import Rollouts, pad_rows_B_T
from providers.whitebox import LocalWhiteBox


@dataclass
class ExtraRows:
    """Rows to append after a batch's B rows: each continues row `source_rows[e]`'s prompt + `contexts[e]`
    with `completions[e]`, trained with one advantage per token, `advantages[e]`."""

    source_rows: list[int] = field(default_factory=list)
    contexts: list[list[int]] = field(default_factory=list)
    completions: list[list[int]] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)

    def add(self, source_row: int, context: list[int], completion: list[int], advantage: float) -> None:
        self.source_rows.append(source_row)
        self.contexts.append(list(context))
        self.completions.append(list(completion))
        self.advantages.append(float(advantage))

    def __len__(self) -> int:
        return len(self.completions)


def text_to_completion(tokenizer, text: str, finished: bool, max_tokens: int) -> list[int]:
    """Student-tokenizer ids of a teacher's text, closed with end-of-turn when the teacher stopped."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if finished and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids[:max_tokens]


def with_rows(rollouts: Rollouts, new_rows: dict[int, list[int]], tokenizer, student) -> Rollouts:
    """`rollouts` with the completions of `new_rows` (row -> token ids) replaced.

    The completion tensors are re-padded to the longest row; replaced rows get the student's
    log-probabilities from a forward pass and entropy 0 (they are never audited by entropy).
    """
    if not new_rows:
        return rollouts
    lengths = rollouts.lengths
    rows = [new_rows.get(b, rollouts.completion_ids[b, :lengths[b]].tolist()) for b in range(len(lengths))]
    return _rebuild(rollouts, prompt_ids_rows(rollouts), rows, sorted(new_rows), list(rollouts.prompts), tokenizer, student)


def append_rows(rollouts: Rollouts, source_rows: list[int], contexts: list[list[int]], completions: list[list[int]],
                tokenizer, student) -> Rollouts:
    """`rollouts` with one row appended per entry: the prompt of row `source_rows[e]` followed by
    `contexts[e]` (e.g. the student's own prefix before a fork) as the prompt, `completions[e]`
    as the completion.

    Rows keep their order (appended rows come after the B original ones); prompts are re-padded
    on the left, completions on the right; appended rows get the student's log-probabilities
    from one no-grad forward (their behaviour log-probs: ratio 1 on the first pass) and entropy 0.
    """
    if not completions:
        return rollouts
    prompt_rows = prompt_ids_rows(rollouts)
    lengths = rollouts.lengths
    rows = [rollouts.completion_ids[b, :n].tolist() for b, n in enumerate(lengths)] + [list(c) for c in completions]
    prompt_rows += [prompt_rows[b] + list(ctx) for b, ctx in zip(source_rows, contexts, strict=True)]
    prompts = list(rollouts.prompts) + [rollouts.prompts[b] for b in source_rows]
    fresh = list(range(len(lengths), len(rows)))
    return _rebuild(rollouts, prompt_rows, rows, fresh, prompts, tokenizer, student)


def prompt_ids_rows(rollouts: Rollouts) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(rollouts.prompt_ids, rollouts.prompt_mask)]


def _rebuild(rollouts: Rollouts, prompt_rows: list[list[int]], rows: list[list[int]], fresh: list[int], prompts,
             tokenizer, student) -> Rollouts:
    """New padded tensors around `prompt_rows`/`rows`; rows in `fresh` are scored by the student, the
    others keep their recorded log-probs and entropies."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dev = rollouts.completion_ids.device
    p_ids = pad_rows_B_T(prompt_rows, pad, rollouts.prompt_ids.dtype, left=True, device=dev)
    p_mask = pad_rows_B_T([[1] * len(r) for r in prompt_rows], 0, rollouts.prompt_mask.dtype, left=True, device=dev)
    ids = pad_rows_B_T(rows, pad, rollouts.completion_ids.dtype, device=dev)
    mask = pad_rows_B_T([[1] * len(r) for r in rows], 0, rollouts.completion_mask.dtype, device=dev)
    lengths, fresh_set = rollouts.lengths, set(fresh)
    kept = [b < len(lengths) and b not in fresh_set for b in range(len(rows))]
    # kept rows keep their recorded log-probs and entropies; fresh rows are filled in below
    logp, ent = (
        pad_rows_B_T([x[b, :lengths[b]] if kept[b] else [] for b in range(len(rows))], 0.0, x.dtype,
                     device=dev, width=ids.size(1))
        for x in (rollouts.logprobs_B_T, rollouts.entropy_B_T)
    )
    if fresh:
        idx = torch.tensor(fresh, device=dev)
        scored = LocalWhiteBox(student, tokenizer, max_rows=16).token_logprobs(p_ids[idx], p_mask[idx], ids[idx], mask[idx])
        logp[idx] = scored.logp_B_T.to(device=dev, dtype=logp.dtype)
    texts = [rollouts.completions[b] if kept[b] else tokenizer.decode(rows[b], skip_special_tokens=True)
             for b in range(len(rows))]
    return replace(rollouts, prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=ids, completion_mask=mask,
                   logprobs_B_T=logp, entropy_B_T=ent, prompts=prompts, completions=texts)


def continue_prefixes(student, tokenizer, rollouts: Rollouts, prefixes: dict[int, list[int]], max_new_tokens: int,
                      temperature: float = 1.0) -> dict[int, list[int]]:
    """The student continues each row's prompt + teacher prefix; returns prefix + continuation ids.

    Sampling matches the rollouts' (temperature, no top-k/top-p); a row whose prefix already
    fills `max_new_tokens` is returned as the prefix alone.
    """
    out: dict[int, list[int]] = {}
    todo = {b: p for b, p in prefixes.items() if len(p) < max_new_tokens}
    out.update({b: p[:max_new_tokens] for b, p in prefixes.items() if b not in todo})
    if not todo:
        return out
    prompt_rows = prompt_ids_rows(rollouts)
    order = sorted(todo)
    budget = max_new_tokens - min(len(p) for p in todo.values())
    conts = sample_continuations(student, tokenizer, [prompt_rows[b] + todo[b] for b in order], budget, temperature)
    for b, cont in zip(order, conts):
        out[b] = (todo[b] + cont)[:max_new_tokens]
    return out


@torch.no_grad()
def sample_continuations(student, tokenizer, contexts: list[list[int]], max_new_tokens: int,
                         temperature: float = 1.0) -> list[list[int]]:
    """One sampled continuation per context (token ids), up to and including the first end-of-turn.

    Sampling matches the rollouts' (temperature, no top-k/top-p); contexts are left-padded
    into one `generate` call.
    """
    if not contexts:
        return []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = eos_token_ids(student, tokenizer)
    dev = next(student.parameters()).device
    input_ids = pad_rows_B_T(contexts, pad, torch.long, left=True, device=dev)
    attn = pad_rows_B_T([[1] * len(c) for c in contexts], 0, torch.long, left=True, device=dev)
    L = input_ids.size(1)
    gen = student.generate(input_ids=input_ids, attention_mask=attn, do_sample=True, temperature=temperature, top_k=0,
                           top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=sorted(eos))
    out = []
    for i in range(len(contexts)):
        cont = gen[i, L:].tolist()
        for j, t in enumerate(cont):
            if t in eos:
                cont = cont[: j + 1]
                break
        out.append(cont)
    return out
