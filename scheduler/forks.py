"""Peak-entropy chunk selection (DESIGN §1.2, the OmniOPD paper's scheduler).

A chunk is C consecutive completion tokens [s, s + C). Candidate starts are the positions s
with s + C <= length (no chunk runs past the end; a completion shorter than C gets none).
Candidates are taken by the student's entropy at s, highest first; one is accepted only if it
is at least C tokens from every start accepted so far (so chunks never overlap); selection
stops after M. Ties in entropy go to the earlier position, so results are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def peak_starts_T(entropy_T: torch.Tensor, length: int, chunk: int, max_chunks: int) -> list[int]:
    """Chunk starts for one completion, ascending.

    `entropy_T` holds per-token entropies (only the first `length` are real; the rest is
    padding). Greedy by entropy, non-overlapping, at most `max_chunks`.
    """
    n_cand = length - chunk + 1  # starts 0 .. length - chunk
    if n_cand <= 0 or max_chunks <= 0:
        return []
    cand = entropy_T[:n_cand].detach().float().cpu()
    # stable sort on -H keeps the earlier position first among equal entropies
    order = torch.sort(-cand, stable=True).indices.tolist()
    blocked = bytearray(n_cand)  # 1 where a start would overlap an accepted chunk
    accepted: list[int] = []
    for s in order:
        if blocked[s]:
            continue
        accepted.append(s)
        if len(accepted) == max_chunks:
            break
        lo, hi = max(0, s - chunk + 1), min(n_cand, s + chunk)
        blocked[lo:hi] = b"\x01" * (hi - lo)
    return sorted(accepted)


EARLY_SHARE = 0.3  # 2026 OPD studies find most of the on-policy signal in the first ~30 % of the answer


def early_starts(length: int, chunk: int, max_chunks: int, share: float = EARLY_SHARE) -> list[int]:
    """Forks by position: back-to-back chunks from the start of the answer, within its first
    `share` (at least one chunk when the completion holds one), at most `max_chunks`.

    Position predicts where a teacher's token is reliable far better than the student's
    entropy does (AUROC 0.83 vs <= 0.57 in the 2026 OPD studies), and an early mistake is the
    one that compounds; this is the scheduler to compare with entropy peaks at equal cost.
    """
    if length < chunk or max_chunks <= 0:
        return []
    k = min(max_chunks, max(1, int(share * length) // chunk))
    return [i * chunk for i in range(k)]


def uniform_starts(length: int, chunk: int, max_chunks: int) -> list[int]:
    """The ablation: min(M, length // C) chunks spread evenly over the completion.

    With k chunks the spacing is length // k >= C, so none overlap and the last one ends by
    `length`.
    """
    k = min(max_chunks, length // chunk)
    if k <= 0:
        return []
    spacing = length // k
    return [i * spacing for i in range(k)]


def chunk_starts_B(
    entropy_B_T: torch.Tensor,
    lengths_B: list[int] | torch.Tensor,
    chunk: int,
    max_chunks: int,
    *,
    batch_budget: int | None = None,
    selection: str = "entropy",
) -> list[list[int]]:
    """Chunk starts for each completion of a batch.

    With `batch_budget`, at most that many chunks are kept across the whole batch: those whose
    start has the highest entropy (a per-step cap on teacher spend).
    """
    lengths = [int(x) for x in (lengths_B.tolist() if isinstance(lengths_B, torch.Tensor) else lengths_B)]
    if selection == "entropy":
        starts = [peak_starts_T(entropy_B_T[b], lengths[b], chunk, max_chunks) for b in range(len(lengths))]
    elif selection == "uniform":
        starts = [uniform_starts(lengths[b], chunk, max_chunks) for b in range(len(lengths))]
    elif selection == "early":
        starts = [early_starts(lengths[b], chunk, max_chunks) for b in range(len(lengths))]
    else:
        raise ValueError(f"unknown selection {selection!r}; use 'entropy', 'uniform' or 'early'")
    if batch_budget is not None:
        flat = [(float(entropy_B_T[b, s]), b, s) for b, ss in enumerate(starts) for s in ss]
        if len(flat) > batch_budget:
            flat.sort(key=lambda x: (-x[0], x[1], x[2]))
            keep = {(b, s) for _, b, s in flat[:batch_budget]}
            starts = [[s for s in ss if (b, s) in keep] for b, ss in enumerate(starts)]
    return starts


@dataclass(frozen=True)
class ForkScheduler:
    """The scheduler policy: chunk length C, chunks per completion M, optional batch budget."""

    chunk_tokens: int = 50
    chunks_per_completion: int = 10
    batch_budget: int | None = None
    selection: str = "entropy"

    def __post_init__(self) -> None:
        if self.chunk_tokens < 1 or self.chunks_per_completion < 1:
            raise ValueError("chunk_tokens and chunks_per_completion must be >= 1")
        if self.selection not in ("entropy", "uniform", "early"):
            raise ValueError(f"unknown selection {self.selection!r}")

    def select(self, entropy_B_T: torch.Tensor, lengths_B: list[int] | torch.Tensor) -> list[list[int]]:
        return chunk_starts_B(
            entropy_B_T,
            lengths_B,
            self.chunk_tokens,
            self.chunks_per_completion,
            batch_budget=self.batch_budget,
            selection=self.selection,
        )
