"""The lab recipes' loss terms as pure tensor functions (shapes in the names; no trainer).

- `token_logprobs_BT`: log pi(y_t | y_<t, x) of each label token (0 where the label is -100),
  from a causal LM's logits: logits at position t predict the label at t + 1 (HF's shift).
- `sequence_logprobs_B`: their sum per row, log pi(y | x) of the completion.
- `ce_loss`: the SFT term, mean negative log-likelihood over all label tokens of the batch
  (what `LlamaForCausalLM(..., labels=...)` returns), so a recipe keeps SFT's exact positive term.
- `dpo_loss_B`: the negatives' pairwise term (Rafailov et al. 2023),
  `-log sigmoid(beta * ((log pi(y+) - log ref(y+)) - (log pi(y-) - log ref(y-))))` per pair.

Why DPO and not unlikelihood for the student's verifier-wrong answers: a wrong answer of this
lab's student is mostly right (the copied names, the format, the first steps); unlikelihood on
every token of it pushes those shared tokens down too and, unbounded, keeps pushing. The
pairwise term is relative — only the margin between the preferred answer and the wrong one,
each measured against a frozen snapshot of the student, moves — and saturates: once the
margin is `>> 1/beta` its gradient vanishes, so it cannot run the likelihood of everything
down (and the cross-entropy term on the positive is kept beside it, as SODA / the issue ask,
because DPO alone displaces likelihood on small models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs_BT(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities of each label token, mask of label tokens), both (B, T-1).

    `labels_BT` holds -100 on prompt, context and padding positions; position t of the output
    is the log-probability of `labels[:, t+1]` under `logits[:, t]`."""
    logits = logits_BTV[:, :-1].float()
    labels = labels_BT[:, 1:]
    mask = labels != -100
    safe = labels.masked_fill(~mask, 0)
    lp = torch.log_softmax(logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return lp * mask, mask


def sequence_logprobs_B(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
    """log pi(completion | context) per row: the sum of its label tokens' log-probabilities."""
    lp, _ = token_logprobs_BT(logits_BTV, labels_BT)
    return lp.sum(-1)


def ce_loss(logits_BTV: torch.Tensor, labels_BT: torch.Tensor) -> torch.Tensor:
    """Mean NLL over every label token of the batch (a scalar; 0 rows -> 0)."""
    lp, mask = token_logprobs_BT(logits_BTV, labels_BT)
    n = mask.sum()
    return -(lp.sum() / n) if n > 0 else lp.sum() * 0.0


def dpo_loss_B(pi_pos_B: torch.Tensor, pi_neg_B: torch.Tensor, ref_pos_B: torch.Tensor, ref_neg_B: torch.Tensor,
               beta: float) -> torch.Tensor:
    """Per-pair DPO loss, (B,): -log sigmoid(beta * (pi margin - ref margin)).

    All inputs are sequence log-probabilities (B,); the reference ones carry no gradient. At
    pi == ref the loss is log 2 and its gradient pushes log pi(y+) up and log pi(y-) down
    with equal weight beta / 2."""
    margin = (pi_pos_B - ref_pos_B.detach()) - (pi_neg_B - ref_neg_B.detach())
    return -F.logsigmoid(beta * margin)
