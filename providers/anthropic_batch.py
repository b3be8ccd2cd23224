"""Anthropic Message Batches (`client.messages.batches`): half-price Messages requests.

One item is one Messages request (the API has no `n`): N samples of a prompt are N items with
the same params. The params are the live teacher's `build_body` (no prompt-cache marker: a
batch's requests run in any order, so a cache write buys nothing), with a row's sampling
parameters moved from the SDK's `extra_body` into the params themselves. Results stream as JSONL
from the batch's `results_url`, matched by `custom_id` (their order is not the request order).
Limits: 100 000 requests or 256 MB per batch; the client keeps batches far below both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from providers.batch_base import BatchClientBase, BatchItem, BatchStatus, ItemResult
from providers.continuation import split_prefix

_ENDED = {"ended": "ended", "canceling": "canceling"}


class AnthropicBatchClient(BatchClientBase):
    provider = "anthropic"
    max_items = 100_000
    max_bytes = 256_000_000

    def params(self, item: BatchItem) -> dict[str, Any]:
        """The Messages params of one item (pure; tests inspect it)."""
        body = self.teacher.build_body(item.request, split_prefix(item.request.prefix), cache=False)
        body.update(body.pop("extra_body", None) or {})
        return body

    async def create(self, items: Sequence[BatchItem], tag: str) -> str:
        assert all(it.k == 1 for it in items), "a Messages request returns one sample"
        requests = [{"custom_id": it.custom_id, "params": self.params(it)} for it in items]
        batch = await self._call(lambda: self._client().messages.batches.create(requests=requests), "create", once=True)
        return batch.id

    async def status(self, batch_id: str) -> BatchStatus:
        b = await self._call(lambda: self._client().messages.batches.retrieve(batch_id), "retrieve", batch_id)
        c = b.request_counts
        counts = {k: int(getattr(c, k, 0) or 0) for k in ("processing", "succeeded", "errored", "canceled", "expired")}
        total = sum(counts.values())
        return BatchStatus(batch_id, _ENDED.get(b.processing_status, "in_progress"), b.processing_status,  # type: ignore[arg-type]
                           done=total - counts["processing"], total=total, counts=counts)

    async def results(self, batch_id: str, items: Sequence[BatchItem]) -> list[ItemResult]:
        by_id = {it.custom_id: it for it in items}

        async def fetch() -> list[Any]:
            return [r async for r in await self._client().messages.batches.results(batch_id)]

        out = []
        for r in await self._call(fetch, "results", batch_id):
            item = by_id.get(r.custom_id)
            if item is None:
                continue
            kind = r.result.type
            if kind == "succeeded":
                res = self.teacher.parse_message(r.result.message)
                samples, cost = self._samples(res, item, batch_id)
                out.append(ItemResult(r.custom_id, "succeeded", samples, cost, res.input_tokens + res.cache_read_tokens
                                      + res.cache_write_tokens, res.output_tokens, request_id=res.request_id or None))
            elif kind == "errored":
                err = getattr(r.result.error, "error", None)
                msg = f"{getattr(err, 'type', 'error')}: {getattr(err, 'message', '')}" if err is not None else "errored"
                out.append(ItemResult(r.custom_id, "errored", error=msg,
                                      request_id=getattr(r.result.error, "request_id", None)))
            else:  # expired, canceled: nothing was billed
                out.append(ItemResult(r.custom_id, "expired" if kind == "expired" else "canceled", error=kind))
        return out

    async def cancel(self, batch_id: str) -> None:
        await self._call(lambda: self._client().messages.batches.cancel(batch_id), "cancel", batch_id)

    async def find(self, tag: str, items: int, since: float, known: set[str]) -> str | None:
        async def page() -> list[Any]:
            return list((await self._client().messages.batches.list(limit=100)).data)

        found = []
        for b in await self._call(page, "list"):
            total = sum(int(getattr(b.request_counts, k, 0) or 0)
                        for k in ("processing", "succeeded", "errored", "canceled", "expired"))
            if b.id not in known and b.created_at.timestamp() >= since - 300 and total == items:
                found.append(b.id)
        return found[0] if len(found) == 1 else None
