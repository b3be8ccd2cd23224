"""What `omniopd collect` still has to buy, and what it would cost, before anything is sent.

The sample cache is the truth of what was bought: for each prompt the request is
`omniopd.solutions.solution_request(prompt, n=N, max_tokens, temperature)` — the one every
recipe that reads solutions sends — (or, for `--what forks`, the fork requests a training step
builds, `omniopd/collect_forks.py`) and its cache key `cache.teacher.request_key(identity,
request)`. A request needs `N - stored - in flight` more samples, where "in flight" counts the
items of batches already submitted and not yet stored (the batch journal): planning twice never
asks twice. Identical prompts share one key and are bought once.

Estimates (for `--dry-run` and the summary): prompt tokens ~ characters / 4 and every answer at
its `max_tokens`, at the live price card and at the batch price; the worst case (what the spend
ledger reserves) is the teacher's own bound, which over-states prompts about 4x.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cache.teacher import request_key
from omniopd.solutions import solution_request
from providers.base import TeacherRequest
from providers.batch_base import BATCH_DISCOUNT, BatchItem


@dataclass(frozen=True)
class Want:
    """One prompt's shortfall: `missing` more samples of `request` under cache `key`."""

    prompt: list[dict[str, str]]
    request: TeacherRequest
    key: bytes
    missing: int


@dataclass(frozen=True)
class PlannedItem:
    """A batch item and the cache key its samples belong to."""

    item: BatchItem
    key: bytes


def solution_wants(prompts: Iterable[list[dict[str, str]]], identity: dict[str, Any], *, n: int, max_tokens: int,
                   temperature: float | None, stored: Callable[[Sequence[bytes]], dict[bytes, int]],
                   in_flight: dict[bytes, int]) -> list[Want]:
    """The prompts that still need samples (see the module docstring); `stored(keys)` counts pools."""
    requests = [(p, solution_request(p, n=n, max_tokens=max_tokens, temperature=temperature)) for p in prompts]
    return request_wants(requests, identity, stored=stored, in_flight=in_flight)


def request_wants(requests: Iterable[tuple[list[dict[str, str]], TeacherRequest]], identity: dict[str, Any], *,
                  stored: Callable[[Sequence[bytes]], dict[bytes, int]], in_flight: dict[bytes, int]) -> list[Want]:
    """Each distinct request's shortfall: its `n` minus what is stored and in flight under its key."""
    by_key: dict[bytes, tuple[list[dict[str, str]], TeacherRequest]] = {}
    for p, req in requests:
        by_key.setdefault(request_key(identity, req), (p, req))
    have = stored(list(by_key))
    out = []
    for key, (p, req) in by_key.items():
        missing = req.n - have.get(key, 0) - in_flight.get(key, 0)
        if missing > 0:
            out.append(Want(p, req, key, missing))
    return out


def batch_items(wants: Sequence[Want], per_item: int) -> list[PlannedItem]:
    """Each want as items of at most `per_item` samples (the model's `max_n`; 1 on Anthropic).

    Item requests keep the want's request (its `n` is N, not the item's share): the request is
    the cache key's and the journal's record; `BatchItem.k` says how many samples the item asks.
    """
    out = []
    for w in wants:
        left = w.missing
        while left > 0:
            k = min(per_item, left)
            out.append(PlannedItem(BatchItem(f"i{len(out)}", w.request, k), w.key))
            left -= k
    return out


@dataclass(frozen=True)
class Estimate:
    prompts: int
    samples: int
    requests_live: int
    requests_batch: int
    live_usd: float
    batch_usd: float
    worst_batch_usd: float


def estimate(wants: Sequence[Want], caps: Any, max_n: int, worst_case_usd: Callable[[TeacherRequest], float]) -> Estimate:
    """Expected cost live and batched (chars/4 prompt tokens, answers at max tokens), and the
    batch's worst case at the batch price."""
    live = worst = 0.0
    requests = 0
    for w in wants:
        calls = -(-w.missing // max(1, max_n))
        requests += calls
        prompt = sum(len(m.content) for m in w.request.messages) / 4 + 8
        live += caps.cost_usd(calls * prompt, w.missing * w.request.max_tokens)
        worst += worst_case_usd(w.request.with_n(w.missing)) * BATCH_DISCOUNT
    return Estimate(len(wants), sum(w.missing for w in wants), requests, requests, live, live * BATCH_DISCOUNT, worst)
