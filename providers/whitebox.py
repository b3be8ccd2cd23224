"""White-box teacher access: the teacher's log-probabilities on the student's own tokens.

Standard OPD, SG-OPD and TrOPD score every token the student sampled with the teacher's
log-probability of that token (TrOPD also needs the teacher's top-k tokens at each position).
That needs a teacher that (a) exposes log-probabilities for a given token sequence and (b)
shares the student's tokenizer, so "the student's token y_t" means the same thing to both.

- `LocalWhiteBox`: an in-process transformers model (the `local:` teacher). One no-grad
  forward over prompt + completion, exactly the positions the student was trained on.
- `OpenAICompatPromptLogprobs` (providers/vllm_logprobs.py): an OpenAI-compatible server that
  returns prompt log-probabilities (vLLM's `prompt_logprobs`).

`whitebox_for(teacher, student_tokenizer, method)` returns one of these or raises
`TeacherAccessError` naming the methods that do work with the teacher (OmniOPD needs text only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from omniopd.errors import TeacherAccessError


@dataclass
class TokenLogprobs:
    """Teacher scores of a batch of completions; padding positions hold 0 (ids 0)."""

    logp_B_T: torch.Tensor
    topk_logp_B_T_K: torch.Tensor | None = None
    topk_ids_B_T_K: torch.Tensor | None = None


class WhiteBoxTeacher(Protocol):
    """What the white-box methods call. Ids are the student's (same tokenizer)."""

    def token_logprobs(
        self,
        prompt_ids_B_Tp: torch.Tensor,
        prompt_mask_B_Tp: torch.Tensor,
        completion_ids_B_T: torch.Tensor,
        completion_mask_B_T: torch.Tensor,
        top_k: int = 0,
    ) -> TokenLogprobs: ...


def position_ids_B_L(attention_mask_B_L: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (what `generate` uses), so padded rows score like unpadded."""
    return (attention_mask_B_L.long().cumsum(-1) - 1).clamp(min=0)


class LocalWhiteBox:
    """Log-probabilities from an in-process causal LM that shares the student's tokenizer."""

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, max_rows: int = 4, on_scored=None,
                 max_logit_tokens: int = 2048):
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.max_rows = max_rows
        # rows per forward are also capped so that rows x completion width <= max_logit_tokens: the
        # (rows, T, V) fp32 logits of one forward then stay near max_logit_tokens x V x 4 bytes
        # (400 MB at SmolLM2's 49,152 tokens), however many rows a signal appended
        self.max_logit_tokens = max_logit_tokens
        self.on_scored = on_scored  # called with the number of completion tokens scored (usage accounting)

    @torch.no_grad()
    def token_logprobs(self, prompt_ids_B_Tp, prompt_mask_B_Tp, completion_ids_B_T, completion_mask_B_T, top_k: int = 0) -> TokenLogprobs:
        device = next(self.model.parameters()).device
        T = completion_ids_B_T.size(1)
        rows = max(1, min(self.max_rows, self.max_logit_tokens // max(1, T)))
        logps, tk_lp, tk_id = [], [], []
        for s in range(0, completion_ids_B_T.size(0), rows):
            sl = slice(s, s + rows)
            ids = torch.cat([prompt_ids_B_Tp[sl], completion_ids_B_T[sl]], dim=1).to(device)
            mask = torch.cat([prompt_mask_B_Tp[sl], completion_mask_B_T[sl]], dim=1).to(device)
            # logits at position i predict token i + 1: the completion's tokens are predicted by the
            # T positions ending one before the last; only those T + 1 positions are projected
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_B_L(mask),
                                logits_to_keep=T + 1).logits[:, :-1].float()
            if self.temperature != 1.0:
                logits = logits / self.temperature
            lse = torch.logsumexp(logits, dim=-1)  # log_softmax without a second (rows, T, V) tensor
            comp = completion_ids_B_T[sl].to(device)
            valid = completion_mask_B_T[sl].to(device).bool()
            logps.append((logits.gather(-1, comp.unsqueeze(-1)).squeeze(-1) - lse).masked_fill(~valid, 0.0))
            if top_k > 0:
                v, i = logits.topk(min(top_k, logits.size(-1)), dim=-1)
                tk_lp.append((v - lse.unsqueeze(-1)).masked_fill(~valid.unsqueeze(-1), 0.0))
                tk_id.append(i.masked_fill(~valid.unsqueeze(-1), 0))
            del logits
        if self.on_scored is not None:
            self.on_scored(int(completion_mask_B_T.sum()))
        out_device = completion_ids_B_T.device
        return TokenLogprobs(
            torch.cat(logps).to(out_device),
            torch.cat(tk_lp).to(out_device) if top_k > 0 else None,
            torch.cat(tk_id).to(out_device) if top_k > 0 else None,
        )


def same_tokenizer(a, b) -> bool:
    """True when two tokenizers map every token string to the same id (vocab and added tokens)."""
    if a is b:
        return True
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def access_error(teacher_spec: str, method: str, why: str) -> TeacherAccessError:
    return TeacherAccessError(
        f"--method {method} needs the teacher's log-probability of every token the student samples "
        f"(white-box access), but teacher {teacher_spec!r} {why}. With this teacher use --method omniopd "
        "(it needs only the teacher's text; add --verifier-gate for a task verifier). For "
        f"{method}, use a local:MODEL teacher that shares the student's tokenizer, or an "
        "openai-compatible:MODEL teacher served by vLLM (it returns prompt_logprobs)."
    )


def whitebox_for(teacher, student_tokenizer, method: str, *, temperature: float = 1.0) -> WhiteBoxTeacher:
    """The white-box view of `teacher` for `method`, or a TeacherAccessError saying what works."""
    spec = getattr(teacher, "spec", type(teacher).__name__)
    if hasattr(teacher, "token_logprobs"):
        check = getattr(teacher, "check_tokenizer", None)
        if check is not None and not check(student_tokenizer):
            raise access_error(spec, method, "tokenizes text differently from the student")
        return teacher
    model, tok = getattr(teacher, "model", None), getattr(teacher, "tokenizer", None)
    if model is None or tok is None or not isinstance(model, torch.nn.Module):
        raise access_error(spec, method, "is a black-box API teacher that returns text only")
    if not same_tokenizer(tok, student_tokenizer):
        raise access_error(
            spec, method,
            f"has a different tokenizer from the student ({len(tok)} vs {len(student_tokenizer)} tokens, "
            "or the same size with different ids)",
        )
    return LocalWhiteBox(model, tok, temperature=temperature, on_scored=getattr(teacher, "record_scored_tokens", None))
