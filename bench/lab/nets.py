"""Small Llama-architecture models built from config, and the plain SFT loop that trains them.

The teacher and the students are `LlamaForCausalLM`s with the lab's tokenizer. `sft` is
ordinary supervised fine-tuning: cross-entropy on the assistant's tokens only (prompt tokens
are masked), AdamW, linear warm-up then cosine decay. The lab uses it to make the teacher
strong, to make the student's starting point (brief training on reference solutions: it knows
the format, not the arithmetic), and for the "SFT on teacher solutions" arm.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass(frozen=True)
class NetSize:
    hidden: int
    layers: int
    heads: int
    intermediate: int


def build_model(size: NetSize, tokenizer, seed: int, max_positions: int = 256) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        intermediate_size=size.intermediate,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prompt_text(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


def encode_pairs(tokenizer, pairs: list[tuple[str, ...]]) -> list[tuple[list[int], list[int]]]:
    """(question, solution) -> (input ids, labels with the prompt masked to -100); EOS appended.

    A triple (question, prefix, rest) is a partial answer and its continuation: the prefix is
    context (masked like the prompt), only the rest is learned."""
    out = []
    for item in pairs:
        q, sol = item[0], item[-1]
        p = tokenizer(prompt_text(tokenizer, q), add_special_tokens=False)["input_ids"]
        if len(item) == 3 and item[1]:
            p = p + tokenizer(item[1], add_special_tokens=False)["input_ids"]
        c = (tokenizer(sol, add_special_tokens=False)["input_ids"] if sol else []) + [tokenizer.eos_token_id]
        out.append((p + c, [-100] * len(p) + c))
    return out


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    T = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_step(model, opt, sched, batch: dict[str, torch.Tensor]) -> float:
    """One cross-entropy step on a collated batch (gradient clipped at 1); returns the loss."""
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def sft(model, tokenizer, pairs: list[tuple[str, ...]], *, steps: int, batch_size: int, lr: float, seed: int,
        warmup: int | None = None, weight_decay: float = 0.0, schedule: str = "cosine",
        stop: Callable[[int], bool] | None = None) -> list[float]:
    """Train on (question, solution) pairs (or (question, prefix, rest) triples, see
    `encode_pairs`) for `steps` optimizer steps; returns the loss curve. `schedule` is cosine
    decay after warm-up, or constant; `stop(step)` is asked after each step (1-based) and ends
    training early when it returns True (e.g. once a target accuracy is reached)."""
    if not pairs or steps <= 0:
        return []
    data = encode_pairs(tokenizer, pairs)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warmup = max(1, steps // 20) if warmup is None else warmup

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    order: list[int] = []
    losses = []
    for step in range(steps):
        if len(order) < batch_size:
            extra = list(range(len(data)))
            rng.shuffle(extra)
            order += extra
        idx, order = order[:batch_size], order[batch_size:]
        losses.append(train_step(model, opt, sched, collate([data[i] for i in idx], tokenizer.pad_token_id)))
        if stop is not None and stop(step + 1):
            break
    model.eval()
    return losses
