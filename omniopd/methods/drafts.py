"""K student drafts per fork (issue 9): the student's alternatives at a fork, ranked by the teacher's samples.

At each audited fork the student samples K more chunks from the same prefix (no extra teacher
cost). Each draft d, and the student's original chunk (draft 0), is scored against the
fork's N_eff teacher samples by the run's phi:

    s_d = (1 / N_eff) * sum_i phi(draft d, teacher sample i)     (k / N for that draft)
    A_d = s_d - mean_{d' = 0..K} s_d'                            (group-relative over the K + 1)

Drafts become extra rows (context = prompt + prefix, completion = the draft) with per-token
advantage A_d; the original chunk's A_0 is added to its tokens in its own row. So this is
an added GRPO-style loss over the K + 1 chunks of each fork, on top of the chunk term
(pi_hat, or pi_hat minus a baseline): the two sum. Scores use k / N without the Dirichlet
prior: the prior is the student's own confidence, which a comparison among the student's own
samples should not reward. Teacher samples are trimmed to each draft's own length before phi,
as they are for the original.
"""

from __future__ import annotations

import torch

from omniopd.methods.rows import ExtraRows, sample_continuations
from omniopd.scoring import trim_to_chars


def group_relative_F_K(scores_F_K: torch.Tensor) -> torch.Tensor:
    """Scores minus their fork's mean (each row is one fork's K + 1 drafts, the original first)."""
    return scores_F_K - scores_F_K.mean(dim=1, keepdim=True)


def draft_rows(chunks, prompt_rows, completion_ids, student, tokenizer, phi, *, drafts: int, trim_slack: float,
               temperature: float) -> tuple[ExtraRows, list[tuple[object, float]], torch.Tensor]:
    """(draft rows, [(original chunk, A_0)], scores (F, K + 1)) for the chunks with teacher samples."""
    forks = [c for c in chunks if not c.failed and c.phi]
    out = ExtraRows()
    if not forks or drafts <= 0:
        return out, [], torch.zeros(0, drafts + 1, dtype=torch.float64)
    contexts = [list(completion_ids[c.row][:c.start]) for c in forks]
    gen = sample_continuations(student, tokenizer, [prompt_rows[c.row] + ctx for c, ctx in zip(forks, contexts)
                                                    for _ in range(drafts)], max(c.length for c in forks), temperature)
    students, teachers, ids = [], [], []
    for f, c in enumerate(forks):
        for k in range(drafts):
            d = gen[f * drafts + k][:c.length]
            text = tokenizer.decode(d, skip_special_tokens=True)
            ids.append(d)
            students.append(text)
            teachers.append([trim_to_chars(s.text, len(text), trim_slack) for s in c.samples])
    phis = phi(students, teachers)
    scores = torch.zeros(len(forks), drafts + 1, dtype=torch.float64)
    for f, c in enumerate(forks):
        scores[f, 0] = sum(c.phi) / len(c.phi)
        for k in range(drafts):
            row = phis[f * drafts + k]
            scores[f, k + 1] = sum(row) / len(row) if row else 0.0
    adv = group_relative_F_K(scores)
    for f, c in enumerate(forks):
        for k in range(drafts):
            d = ids[f * drafts + k]
            if d:
                out.add(c.row, contexts[f], d, float(adv[f, k + 1]))
    return out, [(c, float(adv[f, 0])) for f, c in enumerate(forks)], scores
