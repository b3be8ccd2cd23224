"""Fork-point imitation (issue 9): the student also learns the teacher's own continuations at its forks.

At each audited fork the teacher has already written N_eff continuations of the student's
prefix (bought to score the student's chunk). Imitation turns them into training rows:
context = prompt + the student's prefix (its own token ids), completion = the teacher's text
tokenized with the student's tokenizer, closed with end-of-turn when the teacher stopped.
Each sample's tokens get advantage w / N_eff, so the N_eff samples of a fork together weigh
w per token — a cross-entropy on the teacher's text after the student's prefix, the black-box
form of DAgger (the student chooses where, the teacher says what comes next). Identical
samples of one fork become one row with the summed weight (the same gradient, fewer rows).

The teacher is asked for ceil(token_factor * C) tokens per continuation, so rows are about a
chunk long; with a large `--teacher-token-factor` a continuation runs to the end of the answer
and its row ends with end-of-turn. Rows never run past the student's `max_new_tokens` counted
from the start of the completion.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from omniopd.methods.rows import ExtraRows, text_to_completion


def sample_weights(counts: Sequence[int], n_eff: int, weight: float) -> list[float]:
    """Per-token advantage of each distinct sample: weight * count / N_eff (sums to `weight` over a fork)."""
    if n_eff <= 0:
        return [0.0 for _ in counts]
    return [weight * c / n_eff for c in counts]


def imitation_rows(chunks, completion_ids: Sequence[Sequence[int]], tokenizer, weight: float,
                   max_new_tokens: int) -> ExtraRows:
    """Rows for every audited chunk with teacher samples (see the module docstring).

    `chunks` are the pipeline's `ChunkAudit`s (row, start, samples); `completion_ids[b]` the
    student's completion of row b (its prefix before a fork is `[:start]`).
    """
    out = ExtraRows()
    for c in chunks:
        if c.failed or not c.samples:
            continue
        budget = max_new_tokens - c.start
        if budget <= 0:
            continue
        seqs = [tuple(text_to_completion(tokenizer, s.text, s.finish_reason == "stop", budget)) for s in c.samples]
        counts = Counter(x for x in seqs if x)
        distinct = list(counts)
        context = list(completion_ids[c.row][:c.start])
        for ids, a in zip(distinct, sample_weights([counts[x] for x in distinct], len(c.samples), weight)):
            out.add(c.row, context, list(ids), a)
    return out
