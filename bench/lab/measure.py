"""The lab's measurements: accuracy (greedy and temperature 1), how far a student moved.

Vectorised and cheap, because the lab measures often (every budget milestone of every arm):
prompts are rendered once, sorted by length and generated in left-padded batches; an answer is
the integer after the last `####` of the completion, compared exactly with the problem's answer
(the lab's answers are integers below 200, so no math parser is needed). One temperature-1
sample per problem estimates pass@1 at T=1; the same samples give the per-token KL from the
student to the start, KL(pi_theta || pi_start), estimated on the student's own samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from bench.lab.nets import prompt_text

_ANSWER = re.compile(r"####\s*(\d+)")


def answer_of(text: str) -> int | None:
    """The integer after the last `####`, or None."""
    found = _ANSWER.findall(text)
    return int(found[-1]) if found else None


@dataclass
class Generation:
    texts: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # without the padding, with the EOS when one was produced


@torch.no_grad()
def generate(model, tokenizer, questions: list[str], *, max_new_tokens: int, batch_size: int = 128,
             temperature: float = 0.0, prefixes: list[str] | None = None, seed: int | None = None) -> Generation:
    """One completion per question (greedy when temperature == 0), in the input order. With
    `prefixes`, each completion continues that partial answer (the prefix is not in the text)."""
    was_training = model.training
    model.eval()
    rendered = [prompt_text(tokenizer, q) + (prefixes[i] + " " if prefixes and prefixes[i] else "")
                for i, q in enumerate(questions)]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in rendered]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out_ids: list[list[int]] = [[] for _ in ids]
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        T = max(len(ids[i]) for i in idx)
        x = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
            x[r, T - len(ids[i]):] = torch.tensor(ids[i])
            mask[r, T - len(ids[i]):] = 1
        if gen is not None:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
        y = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                           pad_token_id=pad, **kw)[:, T:].tolist()
        for r, i in enumerate(idx):
            row = y[r]
            if eos in row:
                row = row[:row.index(eos) + 1]
            else:
                while row and row[-1] == pad:
                    row.pop()
            out_ids[i] = row
    texts = [tokenizer.decode([t for t in row if t != eos], skip_special_tokens=True) for row in out_ids]
    model.train(was_training)
    return Generation(texts, ids, out_ids)


def accuracy(texts: list[str], answers: list[int]) -> float:
    return sum(answer_of(t) == a for t, a in zip(texts, answers)) / max(1, len(answers))


@torch.no_grad()
def token_logprobs(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                   batch_size: int = 128) -> list[torch.Tensor]:
    """Full next-token log-distributions over each completion's positions: list of (T_i, V)."""
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    for b in range(0, len(prompt_ids), batch_size):
        seqs = [p + c for p, c in zip(prompt_ids[b:b + batch_size], completion_ids[b:b + batch_size])]
        T = max(len(s) for s in seqs)
        x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        for r, s in enumerate(seqs):
            x[r, T - len(s):] = torch.tensor(s)
            mask[r, T - len(s):] = 1
        logp = torch.log_softmax(model(input_ids=x, attention_mask=mask).logits.float(), -1)
        for r, (p, c) in enumerate(zip(prompt_ids[b:b + batch_size], completion_ids[b:b + batch_size])):
            start = T - len(c) - 1  # the position that predicts the first completion token
            out.append(logp[r, start:T - 1])
    model.train(was_training)
    return out


def kl_to_start_per_token(model, start, gen: Generation, pad_id: int) -> float:
    """Mean over the student's own sampled tokens of KL(pi_theta || pi_start) (full distributions)."""
    lp = token_logprobs(model, gen.prompt_ids, gen.completion_ids, pad_id)
    lq = token_logprobs(start, gen.prompt_ids, gen.completion_ids, pad_id)
    tot, n = 0.0, 0
    for a, b in zip(lp, lq):
        if a.numel() == 0:
            continue
        tot += float((a.exp() * (a - b)).sum())
        n += a.size(0)
    return tot / max(1, n)


def weights_l2(model, start_state: dict[str, torch.Tensor]) -> float:
    """L2 norm of (theta - theta_start) over all tensors."""
    sq = 0.0
    for k, v in model.state_dict().items():
        sq += float((v.detach().float() - start_state[k].float()).pow(2).sum())
    return sq ** 0.5
