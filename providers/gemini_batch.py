"""Gemini batch mode (google-genai `client.aio.batches`), with inline requests and responses.

An item is one generateContent request with `candidate_count = k` (the prompt billed once), built
by the live teacher's `build_request`, carrying its `custom_id` in the request's `metadata`; the
job's inline responses come back in request order with that metadata, and each parses as a live
answer does (`GeminiTeacher.parse_response`). The job reports no per-request counts, only its
state (pending, running, succeeded, failed, cancelled, expired). Inline requests suit batches up
to about 20 MB; larger sets are split by the caller (`max_items`, `max_bytes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from providers.batch_base import BatchClientBase, BatchItem, BatchStatus, ItemResult
from providers.continuation import split_prefix

_ENDED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def _state(job: Any) -> str:
    s = job.state
    return str(getattr(s, "value", s) or "JOB_STATE_UNSPECIFIED")


class GeminiBatchClient(BatchClientBase):
    provider = "gemini"
    max_items = 2_000
    max_bytes = 20_000_000

    def inlined(self, item: BatchItem) -> dict[str, Any]:
        """One inline request (pure; tests inspect it)."""
        contents, config = self.teacher.build_request(item.request, split_prefix(item.request.prefix), item.k)
        return {"contents": contents, "config": config, "metadata": {"custom_id": item.custom_id}}

    async def create(self, items: Sequence[BatchItem], tag: str) -> str:
        src = [self.inlined(it) for it in items]
        job = await self._call(lambda: self._client().aio.batches.create(model=self.teacher.model, src=src,
                                                                          config={"display_name": f"omniopd-{tag}"}),
                               "create", once=True)
        return job.name

    async def _job(self, batch_id: str) -> Any:
        return await self._call(lambda: self._client().aio.batches.get(name=batch_id), "get", batch_id)

    async def status(self, batch_id: str) -> BatchStatus:
        state = _state(await self._job(batch_id))
        return BatchStatus(batch_id, "ended" if state in _ENDED else "in_progress", state)

    async def results(self, batch_id: str, items: Sequence[BatchItem]) -> list[ItemResult]:
        job = await self._job(batch_id)
        state = _state(job)
        responses = list((job.dest.inlined_responses if job.dest is not None else None) or [])
        by_id = {it.custom_id: it for it in items}
        out: dict[str, ItemResult] = {}
        for pos, r in enumerate(responses):
            cid = (r.metadata or {}).get("custom_id") if isinstance(r.metadata, dict) else None
            if cid is None and pos < len(items):
                cid = items[pos].custom_id
            item = by_id.get(cid or "")
            if item is None or cid in out:
                continue
            if r.response is not None and r.error is None:
                res = self.teacher.parse_response(r.response)
                samples, cost = self._samples(res, item, batch_id)
                out[cid] = ItemResult(cid, "succeeded", samples, cost, res.input_tokens + res.cache_read_tokens,
                                      res.output_tokens, request_id=res.request_id or None)
            else:
                e = r.error
                out[cid] = ItemResult(cid, "errored", error=f"{getattr(e, 'code', '')}: {getattr(e, 'message', '')}")
        fate = {"JOB_STATE_EXPIRED": "expired", "JOB_STATE_CANCELLED": "canceled"}.get(state, "errored")
        for cid in by_id:
            if cid not in out:
                out[cid] = ItemResult(cid, fate, error=f"batch {state}")  # type: ignore[arg-type]
        return [out[cid] for cid in by_id]

    async def cancel(self, batch_id: str) -> None:
        await self._call(lambda: self._client().aio.batches.cancel(name=batch_id), "cancel", batch_id)

    async def find(self, tag: str, items: int, since: float, known: set[str]) -> str | None:
        async def page() -> list[Any]:
            return list((await self._client().aio.batches.list(config={"page_size": 100})).page)

        for job in await self._call(page, "list"):
            if job.display_name == f"omniopd-{tag}":
                return job.name
        return None
