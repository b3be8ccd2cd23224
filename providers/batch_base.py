"""Provider batch APIs, as one interface: submit many requests now, collect their answers later.

Anthropic's Message Batches, OpenAI's Batch API and Gemini's batch mode sell the same tokens as
the live endpoints at half the price (`BATCH_DISCOUNT`), in exchange for an answer within 24
hours. A `BatchClient` (one per provider, `providers/*_batch.py`) wraps the provider's *live*
teacher (`ApiTeacher` subclass) and reuses its request bodies and its answer parsing, so a
sample bought in a batch is the same record a live `teacher.sample(request)` would have made
(same text handling, same validation, same `TeacherSample` fields), billed at the batch price.

Contract of a client:

- `create(items, tag)` submits `BatchItem`s (each: one provider request for `k` samples of one
  `TeacherRequest`, named by a `custom_id` unique in the batch) and returns the provider's batch
  id. `tag` (our job id) goes into the batch's metadata where the API has any. The create call
  itself is attempted once (see `_call`); the caller retries after `find` says it does not exist.
- `status(batch_id)` returns a `BatchStatus` (`ended` once the provider stops processing it;
  counts as the provider reports them).
- `results(batch_id)` returns one `ItemResult` per item (succeeded, errored, expired, canceled);
  call it only once the batch ended.
- `cancel(batch_id)` asks the provider to stop; the batch still ends (with canceled items).
- `find(tag, items, since, known)` looks for a batch we created but whose id we never learned
  (a run killed during the create call): by the tag in its metadata (OpenAI) or display name
  (Gemini); Anthropic batches carry no metadata, so there it is the one batch created since
  `since` with exactly `items` requests that is not `known` — None when none or several match.
- `worst_case_usd(item)` bounds what an item can be billed, at the batch price.

Every API call runs under the teacher's retry policy (`providers/retry.py`); failures surface as
the typed `TeacherError`s with `provider`, `status`, `request_id` and `batch_id` set.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from omniopd.errors import TeacherError
from providers.base import TeacherRequest, TeacherSample
from providers.retry import call_with_retries

T = TypeVar("T")

# Batch prices are half of the live price card (`providers/capabilities.py` TABLE) for all three
# providers. Sources (copied 2026-11-01, the table's PRICES_DATE):
# - Anthropic: https://docs.anthropic.com/en/docs/build-with-claude/batch-processing#pricing
#   ("50% of standard API prices")
# - OpenAI: https://platform.openai.com/docs/guides/batch ("a 50% discount on costs")
# - Gemini: https://ai.google.dev/gemini-api/docs/batch-mode ("50% of the standard cost")
BATCH_DISCOUNT = 0.5

ItemStatus = Literal["succeeded", "errored", "expired", "canceled"]


@dataclass(frozen=True)
class BatchItem:
    """One provider request in a batch: `k` samples of `request` (k <= the model's `max_n`)."""

    custom_id: str
    request: TeacherRequest
    k: int = 1


@dataclass
class BatchStatus:
    """Where a batch stands. `state`: in_progress, canceling, ended; `raw` is the provider's word."""

    batch_id: str
    state: Literal["in_progress", "canceling", "ended"]
    raw: str
    done: int = 0  # items finished (any outcome) as far as the provider reports
    total: int = 0  # 0 when the provider reports no counts (Gemini)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.state == "ended"


@dataclass
class ItemResult:
    """One item's outcome. `cost_usd` is what the provider billed for it (batch price, whole call,
    including answers rejected by validation); samples carry their share of it."""

    custom_id: str
    status: ItemStatus
    samples: list[TeacherSample] = field(default_factory=list)
    cost_usd: float = 0.0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    error: str | None = None
    request_id: str | None = None


class BatchClient(Protocol):
    """See the module docstring."""

    provider: str
    spec: str
    max_items: int  # requests per batch the API accepts
    max_bytes: int  # size of a batch's requests the API accepts
    policy: Any  # the live teacher's `providers.retry.RetryPolicy`: attempts, backoff, deadline

    async def create(self, items: Sequence[BatchItem], tag: str) -> str: ...

    async def status(self, batch_id: str) -> BatchStatus: ...

    async def results(self, batch_id: str, items: Sequence[BatchItem]) -> list[ItemResult]: ...

    async def cancel(self, batch_id: str) -> None: ...

    async def find(self, tag: str, items: int, since: float, known: set[str]) -> str | None: ...

    def worst_case_usd(self, item: BatchItem) -> float: ...

    def identity(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class BatchClientBase:
    """Shared plumbing: the live teacher it wraps, retried calls, batch-priced samples."""

    provider = ""
    max_items = 10_000
    max_bytes = 20_000_000

    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher  # the provider's ApiTeacher: bodies, parsing, caps, retry policy, key
        self.spec = teacher.spec

    @property
    def policy(self) -> Any:
        return self.teacher.policy

    def identity(self) -> dict[str, Any]:
        """The live teacher's identity: batch samples land in the same cache pools."""
        return self.teacher.identity()

    def worst_case_usd(self, item: BatchItem) -> float:
        return self.teacher.worst_case_usd(item.request.with_n(item.k)) * BATCH_DISCOUNT

    def _client(self) -> Any:
        return self.teacher._client()

    async def aclose(self) -> None:
        await self.teacher.aclose()

    async def _call(self, fn: Callable[[], Awaitable[T]], what: str, batch_id: str | None = None, *,
                    once: bool = False) -> T:
        """`fn` under the teacher's retry policy (`once`: a single attempt); a typed error gains the batch id.

        Creating a batch is attempted once: a timeout or a 5xx may come after the provider created
        it, and a blind retry would pay for it twice. The caller looks for it (`find`) first.
        """
        name = f"{self.spec} batch {batch_id}" if batch_id else f"{self.spec} batch"
        policy = dataclasses.replace(self.teacher.policy, max_attempts=1) if once else self.teacher.policy

        async def attempt() -> T:  # a coroutine function: tenacity awaits only those
            return await fn()

        try:
            return await call_with_retries(attempt, policy, what=f"{name}: {what}", provider=self.provider,
                                           secrets=[self.teacher._api_key])
        except TeacherError as exc:
            exc.batch_id = batch_id
            raise

    def _samples(self, res: Any, item: BatchItem, batch_id: str) -> tuple[list[TeacherSample], float]:
        """Parsed answer (`CallResult`) -> the samples a live call would make, at the batch price."""
        from providers.continuation import split_prefix

        split = split_prefix(item.request.prefix)
        samples = self.teacher._to_samples(res, split, 0.0, item.request)
        for s in samples:
            s.cost_usd *= BATCH_DISCOUNT
            s.extra = {**s.extra, "batch": batch_id}
        cost = self.teacher.caps.cost_usd(res.input_tokens, res.output_tokens, res.cache_read_tokens,
                                          res.cache_write_tokens) * BATCH_DISCOUNT
        return samples, cost


def sample_uid(batch_id: str, custom_id: str, index: int) -> bytes:
    """A stable 16-byte id for the `index`-th sample of an item: storing a result twice (a run
    killed between storing and recording it) adds nothing, as the store skips known uids."""
    return hashlib.sha256(f"{batch_id}\x00{custom_id}\x00{index}".encode()).digest()[:16]


_CLIENTS = {"anthropic": ("providers.anthropic_batch", "AnthropicBatchClient"),
            "openai": ("providers.openai_batch", "OpenAIBatchClient"),
            "gemini": ("providers.gemini_batch", "GeminiBatchClient")}


def batch_client_for(teacher: Any) -> "BatchClient":
    """The batch client of a live API teacher's provider; a `TeacherCapabilityError` for others
    (OpenAI-compatible servers and local models have no batch API: use live collection)."""
    import importlib

    from omniopd.errors import TeacherCapabilityError

    found = _CLIENTS.get(getattr(teacher, "provider", ""))
    if found is None:
        raise TeacherCapabilityError(f"teacher {teacher.spec}: no batch API (only anthropic, openai and gemini have one); "
                                     "collect without --batch", provider=getattr(teacher, "provider", None))
    return getattr(importlib.import_module(found[0]), found[1])(teacher)
