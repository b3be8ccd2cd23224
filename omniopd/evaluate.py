"""Evaluate a student on math word problems: greedy accuracy and pass@K.

`evaluate(model, tokenizer, rows, ...)` works on any in-memory causal LM (the lab calls it on
its tiny models); `omniopd eval` (cli_eval.py) loads a model by spec and calls it. Rows are the
prompt-set rows of `omniopd.data` (`{"prompt": messages, "answer": reference}`); answers are
read and compared by `omniopd.answers` (math-verify).

Generation is batched with left padding, prompts sorted by length so a batch wastes little on
padding, each prompt rendered with the model's own chat template. Greedy decoding gives the
accuracy; with `samples=K` each prompt is also sampled K times (temperature `temperature`) and
pass@k is the unbiased estimator for every k in 1, 2, 4, ..., K.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from omniopd.answers import extract_answer, is_correct, pass_at_k
from omniopd.errors import DataError
from omniopd.rollouts import render_messages


@dataclass
class EvalResult:
    """What one evaluation measured; `to_dict()` is the eval.json layout."""

    model: str
    data: str
    n: int
    greedy_accuracy: float
    pass_at_k: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 0
    generated_tokens: int = 0
    wall_s: float = 0.0
    no_answer_rate: float = 0.0
    problems: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A small fixed-width table for the terminal."""
        lines = [f"model   {self.model}", f"data    {self.data} ({self.n} problems)"]
        lines.append(f"{'metric':<22}{'value':>10}")
        lines.append(f"{'greedy accuracy':<22}{self.greedy_accuracy:>10.4f}")
        for k, v in self.pass_at_k.items():
            lines.append(f"{f'pass@{k} (T={self.temperature:g})':<22}{v:>10.4f}")
        lines.append(f"{'no answer (greedy)':<22}{self.no_answer_rate:>10.4f}")
        lines.append(f"{'generated tokens':<22}{self.generated_tokens:>10d}")
        lines.append(f"{'wall time (s)':<22}{self.wall_s:>10.1f}")
        tps = self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0
        lines.append(f"{'tokens / s':<22}{tps:>10.1f}")
        return "\n".join(lines)


def render_prompts(tokenizer, rows: list[dict[str, Any]]) -> list[str]:
    """Each row's messages as generation input (`omniopd.rollouts.render_messages`: the chat
    template, or plain text for a base model) — the same format training uses."""
    return render_messages(tokenizer, [r["prompt"] for r in rows])


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    progress: bool = True,
    desc: str = "generating",
) -> tuple[list[list[str]], int]:
    """Completions (`num_return_sequences` per prompt, in prompt order) and the tokens generated.

    Batches hold `batch_size` sequences in total, so sampling K per prompt puts
    batch_size // K prompts in a batch.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    per_batch = max(1, batch_size // num_return_sequences)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[str]] = [[] for _ in prompts]
    n_tokens = 0
    device = next(model.parameters()).device
    try:
        bar = tqdm(total=len(prompts) * num_return_sequences, desc=desc, unit="seq", disable=not progress)
        for start in range(0, len(order), per_batch):
            idx = order[start:start + per_batch]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=False).to(device)
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id, "num_return_sequences": num_return_sequences}
            if do_sample:
                kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            gen = model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row in range(new.shape[0]):
                toks = new[row]
                ends = (toks == tokenizer.eos_token_id).nonzero()
                length = int(ends[0]) + 1 if len(ends) else len(toks)  # no EOS: it ran to max_new_tokens
                n_tokens += length
                out[idx[row // num_return_sequences]].append(tokenizer.decode(toks[:length], skip_special_tokens=True))
            bar.update(new.shape[0])
        bar.close()
    finally:
        model.train(was_training)
    return out, n_tokens


def evaluate(
    model,
    tokenizer,
    rows: list[dict[str, Any]],
    *,
    model_name: str = "model",
    data_name: str = "data",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    samples: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    keep_texts: bool = True,
) -> EvalResult:
    """Greedy accuracy (and pass@k up to `samples`) of `model` on `rows` with reference answers."""
    missing = [i for i, r in enumerate(rows) if r.get("answer") is None]
    if missing:
        raise DataError(f"{data_name}: {len(missing)} rows have no reference answer (first: row {missing[0]}); set --answer-field")
    t0 = time.perf_counter()
    prompts = render_prompts(tokenizer, rows)
    greedy, n_tok = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, desc="greedy")
    sampled: list[list[str]] = [[] for _ in rows]
    if samples > 0:
        torch.manual_seed(seed)
        sampled, n_s = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                      num_return_sequences=samples, do_sample=True, temperature=temperature, progress=progress,
                                      desc=f"sampling x{samples}")
        n_tok += n_s
    wall = time.perf_counter() - t0

    problems, n_correct, n_none = [], 0, 0
    counts = []
    for row, (g,), ss in zip(rows, greedy, sampled, strict=True):
        ok = is_correct(g, row["answer"])
        pred = extract_answer(g)
        n_correct += ok
        n_none += pred is None
        c = sum(is_correct(s, row["answer"]) for s in ss)
        counts.append(c)
        item: dict[str, Any] = {"question": row["prompt"][-1]["content"], "gold": extract_answer(row["answer"]), "greedy_answer": pred,
                                "greedy_correct": ok}
        if samples:
            item["samples_correct"] = c
        if keep_texts:
            item["greedy_text"] = g
        problems.append(item)
    pass_k: dict[str, float] = {}
    if samples:
        ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= samples} | {samples})
        for k in ks:
            pass_k[str(k)] = sum(pass_at_k(samples, c, k) for c in counts) / len(rows)
    n = len(rows)
    return EvalResult(model=model_name, data=data_name, n=n, greedy_accuracy=n_correct / n, pass_at_k=pass_k, samples=samples,
                      temperature=temperature, max_new_tokens=max_new_tokens, generated_tokens=n_tok, wall_s=wall,
                      no_answer_rate=n_none / n, problems=problems)


def write_report(result: EvalResult, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    return p
