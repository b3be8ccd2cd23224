"""Editing a batch of rollouts: teacher-written rows (SG-OPD) and teacher-prefixed rows (TrOPD).

Both methods put completions the student did not sample into the batch. These helpers rebuild
the padded (B, T) tensors around new token rows and record the student's own log-probabilities
on them (the behaviour log-probabilities the learner's ratio and the drift gate compare with),
from one no-grad forward of the student.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from omniopd.models import eos_token_ids
from omniopd.rollouts import Rollouts, pad_rows_B_T
from providers.whitebox import LocalWhiteBox


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
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = rollouts.lengths
    rows = [new_rows.get(b, rollouts.completion_ids[b, :lengths[b]].tolist()) for b in range(len(lengths))]
    dev = rollouts.completion_ids.device
    ids = pad_rows_B_T(rows, pad, rollouts.completion_ids.dtype, device=dev)
    mask = pad_rows_B_T([[1] * len(r) for r in rows], 0, rollouts.completion_mask.dtype, device=dev)
    # kept rows keep their recorded log-probs and entropies; replaced rows are filled in below
    logp, ent = (
        pad_rows_B_T([[] if b in new_rows else x[b, :lengths[b]] for b in range(len(rows))], 0.0, x.dtype,
                     device=dev, width=ids.size(1))
        for x in (rollouts.logprobs_B_T, rollouts.entropy_B_T)
    )
    scored = LocalWhiteBox(student, tokenizer).token_logprobs(rollouts.prompt_ids, rollouts.prompt_mask, ids, mask)
    for b in new_rows:
        logp[b] = scored.logp_B_T[b].to(logp.dtype)
    texts = list(rollouts.completions)
    for b, r in new_rows.items():
        texts[b] = tokenizer.decode(r, skip_special_tokens=True)
    return replace(rollouts, completion_ids=ids, completion_mask=mask, logprobs_B_T=logp, entropy_B_T=ent, completions=texts)


@torch.no_grad()
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
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = eos_token_ids(student, tokenizer)
    seqs = {b: rollouts.prompt_ids[b][rollouts.prompt_mask[b].bool()].tolist() + p for b, p in todo.items()}
    order = sorted(seqs)
    dev = next(student.parameters()).device
    input_ids = pad_rows_B_T([seqs[b] for b in order], pad, torch.long, left=True, device=dev)
    attn = pad_rows_B_T([[1] * len(seqs[b]) for b in order], 0, torch.long, left=True, device=dev)
    L = input_ids.size(1)
    budget = max_new_tokens - min(len(p) for p in todo.values())
    gen = student.generate(input_ids=input_ids, attention_mask=attn, do_sample=True, temperature=temperature, top_k=0,
                           top_p=1.0, max_new_tokens=budget, pad_token_id=pad, eos_token_id=sorted(eos))
    for i, b in enumerate(order):
        cont = gen[i, L:].tolist()
        for j, t in enumerate(cont):
            if t in eos:
                cont = cont[: j + 1]
                break
        out[b] = (todo[b] + cont)[:max_new_tokens]
    return out
