"""Log-probabilities and exact entropies of sampled tokens by one teacher-forced student forward.

The scheduler needs H_t, the full-vocabulary entropy of the distribution each completion
token was drawn from. Hugging Face generation reports it for free (rollouts.py records it
from the logits it already computed); a generator that returns only token ids and a sampled
log-probability — vLLM, through TRL's `use_vllm` path, colocate or server — cannot. For those,
one forward pass of the student over prompt + completion (no sampling, no grad) gives, at
every completion position, the same distribution the sampler used:

    logits_t / temperature  ->  log pi(. | y_<t)  ->  log pi(y_t),  H_t = -sum_v p log p

It is exact (not an estimate) and costs about one training forward, small next to the
generation it follows. Prompts are left-padded as generation saw them, and position ids are
taken from the attention mask (as `generate` does), so padded rows get the same positions.
`rollouts_from_token_ids` builds a full `Rollouts` from any generator's token ids this way.
"""

from __future__ import annotations

import torch

from omniopd.rollouts import Rollouts, entropy_B, pad_rows_B_T


@torch.no_grad()
def teacher_forced_B_T(model, prompt_ids_B_Tp: torch.Tensor, prompt_mask_B_Tp: torch.Tensor,
                       completion_ids_B_T: torch.Tensor, completion_mask_B_T: torch.Tensor, *,
                       temperature: float = 1.0, rows_per_pass: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y_t), H_t), both (B, T) and 0 past each completion's end, from one forward per `rows_per_pass` rows.

    Rows go through in slices so the (rows, T, V) logits stay bounded on long completions.
    """
    device = next(model.parameters()).device
    B, T = completion_ids_B_T.shape
    logp_out = torch.zeros(B, T, dtype=torch.float32)
    ent_out = torch.zeros(B, T, dtype=torch.float32)
    for s in range(0, B, rows_per_pass):
        sl = slice(s, s + rows_per_pass)
        ids = torch.cat([prompt_ids_B_Tp[sl], completion_ids_B_T[sl]], dim=1).to(device)
        attn = torch.cat([prompt_mask_B_Tp[sl], completion_mask_B_T[sl]], dim=1).to(device).long()
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1).logits
        logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)  # position t predicts token t
        tok = completion_ids_B_T[sl].to(device)
        logp_out[sl] = logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1).cpu()
        ent_out[sl] = entropy_B(logp).cpu()
    mask = completion_mask_B_T.float().cpu()
    return logp_out * mask, ent_out * mask


def rollouts_from_token_ids(model, tokenizer, prompts: list[list[dict]], prompt_ids: list[list[int]],
                            completion_ids: list[list[int]], *, temperature: float = 1.0,
                            rows_per_pass: int = 8) -> Rollouts:
    """A `Rollouts` from a generator's token ids (each completion ends at, and includes, its end-of-turn token).

    Log-probabilities and entropies come from `teacher_forced_B_T`, under the trainer's weights
    and numerics: the behaviour policy the learner's PPO ratio starts from.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    P = pad_rows_B_T(prompt_ids, pad, torch.long, left=True)
    PM = pad_rows_B_T([[1] * len(p) for p in prompt_ids], 0, torch.long, left=True, width=P.size(1))
    C = pad_rows_B_T(completion_ids, pad, torch.long)
    CM = pad_rows_B_T([[1] * len(c) for c in completion_ids], 0, torch.long, width=C.size(1))
    logp, ent = teacher_forced_B_T(model, P, PM, C, CM, temperature=temperature, rows_per_pass=rows_per_pass)
    device = next(model.parameters()).device
    return Rollouts(prompt_ids=P.to(device), prompt_mask=PM.to(device), completion_ids=C.to(device),
                    completion_mask=CM.to(device), logprobs_B_T=logp.to(device), entropy_B_T=ent.to(device),
                    prompts=prompts, completions=tokenizer.batch_decode(completion_ids, skip_special_tokens=True))
