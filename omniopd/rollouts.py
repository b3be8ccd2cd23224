"""Student rollouts with per-token log-probabilities and exact entropies (DESIGN §1.1).

The student samples one completion per input row (TRL repeats each prompt G times upstream).
For every sampled token we keep log pi(y_t) and the full-vocabulary entropy H_t of the very
distribution it was drawn from, computed from the logits generation already produced — no
second forward pass. A `LogitsProcessor` placed last in the chain does it: generation runs
with temperature 1 and no top-k/top-p warpers, and the processor itself applies the student
temperature, so what it records is exactly what the sampler uses. It keeps O(B) floats per
step, never the (B, T, V) score tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from omniopd.models import eos_token_ids


def entropy_B(logp_B_V: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) per row of log-probabilities; -inf entries (p = 0) contribute 0."""
    p = logp_B_V.exp()
    return -torch.where(p > 0, p * logp_B_V, torch.zeros_like(p)).sum(-1)


class _Recorder(LogitsProcessor):
    """Applies the temperature and records log pi(y_t) and H_t of the final distribution."""

    def __init__(self, temperature: float, progress=None):
        self.temperature = temperature
        self.progress = progress
        self.entropy: list[torch.Tensor] = []
        self.logprob: list[torch.Tensor] = []
        self._pending: torch.Tensor | None = None

    def _settle(self, tokens_B: torch.Tensor) -> None:
        if self._pending is not None:
            self.logprob.append(self._pending.gather(-1, tokens_B.unsqueeze(-1)).squeeze(-1))
            self._pending = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.entropy:  # the token sampled at the previous step is now the last input id
            self._settle(input_ids[:, -1])
        scores = scores / self.temperature
        logp = torch.log_softmax(scores.float(), dim=-1)
        self.entropy.append(entropy_B(logp))
        self._pending = logp
        if self.progress is not None:
            self.progress.update(1)
        return scores


@dataclass
class Rollouts:
    """A batch of completions; tensors are (B, Tp) for prompts (left-padded) and (B, T) for completions."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logprobs_B_T: torch.Tensor
    entropy_B_T: torch.Tensor
    prompts: list[list[dict]]
    completions: list[str]

    @property
    def lengths(self) -> list[int]:
        return self.completion_mask.sum(-1).tolist()


def pad_rows_B_T(rows, pad_value, dtype, *, left: bool = False, device=None, width: int | None = None) -> torch.Tensor:
    """Ragged rows (lists or 1-D tensors) as one (B, T) tensor; T = `width`, else the longest row (at least 1).

    Prompts are left-padded (`left=True`, as generation saw them), completions right-padded.
    """
    tensors = [torch.as_tensor(r, dtype=dtype, device=device) for r in rows]
    width = width or max(1, max((t.numel() for t in tensors), default=0))
    out = torch.full((len(tensors), width), pad_value, dtype=dtype, device=device)
    for b, t in enumerate(tensors):
        if t.numel():
            if left:
                out[b, width - t.numel():] = t
            else:
                out[b, :t.numel()] = t
    return out


def completion_mask_B_T(completion_ids: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
    """1 up to and including the first end-of-turn token, 0 after (generation pads past it)."""
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= completion_ids == e
    # position of first eos, or T when there is none
    T = completion_ids.size(1)
    idx = torch.arange(T, device=completion_ids.device).expand_as(completion_ids)
    first = torch.where(is_eos, idx, torch.full_like(idx, T)).min(dim=1, keepdim=True).values
    return (idx <= first).long()


def render_messages(tokenizer, prompts: list[list[dict]]) -> list[str]:
    """Each prompt's messages through the tokenizer's chat template, ready for generation; a
    tokenizer without one (a base model) gets plain text, one turn per line. Training and
    evaluation both render prompts here, so a student is trained on the format it is scored on."""
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    return ["\n".join(m["content"] for m in p) + "\n" for p in prompts]


@torch.no_grad()
def generate_rollouts(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, temperature: float = 1.0,
                      generator_seed: int | None = None, progress: bool = False) -> Rollouts:
    """Sample one completion per prompt (a list of chat messages) and record logprobs/entropies.

    `progress` shows a bar over generated positions (the batch advances one token per step).
    """
    device = next(model.parameters()).device
    texts = render_messages(tokenizer, prompts)
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False).to(device)
    bar = tqdm(total=max_new_tokens, desc=f"rollouts ({len(prompts)})", unit="tok", leave=False, disable=not progress)
    recorder = _Recorder(temperature, bar)
    eos = eos_token_ids(model, tokenizer)
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=None,
        max_new_tokens=max_new_tokens,
        logits_processor=LogitsProcessorList([recorder]),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(eos),
        return_dict_in_generate=True,
    )
    bar.close()
    completion_ids = out.sequences[:, enc["input_ids"].size(1):]
    T = completion_ids.size(1)
    recorder._settle(completion_ids[:, -1])  # the last step's token has no later call to settle it
    logprobs = torch.stack(recorder.logprob[:T], dim=1)
    entropy = torch.stack(recorder.entropy[:T], dim=1)
    mask = completion_mask_B_T(completion_ids, eos)
    ids_for_text = [ids[: int(m.sum())] for ids, m in zip(completion_ids, mask)]
    return Rollouts(
        prompt_ids=enc["input_ids"],
        prompt_mask=enc["attention_mask"],
        completion_ids=completion_ids,
        completion_mask=mask,
        logprobs_B_T=logprobs * mask,
        entropy_B_T=entropy * mask,
        prompts=prompts,
        completions=tokenizer.batch_decode(ids_for_text, skip_special_tokens=True),
    )
