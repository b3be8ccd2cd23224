"""OpenAI Batch API: a JSONL file of Chat Completions requests (`files.create(purpose="batch")`),
then `batches.create/retrieve/cancel`, answers in an output file and failures in an error file.

An item is one chat request with `n = k` (the prompt billed once, as live). Each line's body is
the live teacher's `chat_body`, so the samples parse exactly as live ones do. Requests missing
from both result files took the batch's fate: expired (`expired` batch) or canceled. A batch
whose file failed validation (`failed`) errors every item with the provider's reasons.
Limits: 50 000 requests and 200 MB per input file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from providers.batch_base import BatchClientBase, BatchItem, BatchStatus, ItemResult
from providers.continuation import split_prefix

ENDPOINT = "/v1/chat/completions"
_ENDED = {"failed", "completed", "expired", "cancelled"}


class OpenAIBatchClient(BatchClientBase):
    provider = "openai"
    max_items = 50_000
    max_bytes = 200_000_000

    def line(self, item: BatchItem) -> dict[str, Any]:
        """One line of the input file (pure; tests inspect it)."""
        body = self.teacher.chat_body(item.request, split_prefix(item.request.prefix), item.k)
        return {"custom_id": item.custom_id, "method": "POST", "url": ENDPOINT, "body": body}

    async def create(self, items: Sequence[BatchItem], tag: str) -> str:
        data = "".join(json.dumps(self.line(it), ensure_ascii=False) + "\n" for it in items).encode()
        f = await self._call(lambda: self._client().files.create(file=(f"omniopd-{tag}.jsonl", data, "application/jsonl"),
                                                                  purpose="batch"), "upload the input file")
        b = await self._call(lambda: self._client().batches.create(input_file_id=f.id, endpoint=ENDPOINT,
                                                                    completion_window="24h",
                                                                    metadata={"omniopd_job": tag}), "create", once=True)
        return b.id

    async def _batch(self, batch_id: str) -> Any:
        return await self._call(lambda: self._client().batches.retrieve(batch_id), "retrieve", batch_id)

    async def status(self, batch_id: str) -> BatchStatus:
        b = await self._batch(batch_id)
        c = b.request_counts
        total, ok, failed = (int(getattr(c, k, 0) or 0) for k in ("total", "completed", "failed")) if c else (0, 0, 0)
        state = "ended" if b.status in _ENDED else ("canceling" if b.status == "cancelling" else "in_progress")
        return BatchStatus(batch_id, state, b.status, done=ok + failed, total=total,  # type: ignore[arg-type]
                           counts={"completed": ok, "failed": failed})

    async def _lines(self, file_id: str | None, batch_id: str) -> list[dict[str, Any]]:
        if not file_id:
            return []

        async def fetch() -> str:
            return (await self._client().files.content(file_id)).text

        text = await self._call(fetch, f"download {file_id}", batch_id)
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()]

    async def results(self, batch_id: str, items: Sequence[BatchItem]) -> list[ItemResult]:
        from openai.types.chat import ChatCompletion

        b = await self._batch(batch_id)
        by_id = {it.custom_id: it for it in items}
        out: dict[str, ItemResult] = {}
        for line in await self._lines(b.output_file_id, batch_id) + await self._lines(b.error_file_id, batch_id):
            cid, item = line.get("custom_id"), by_id.get(line.get("custom_id", ""))
            if item is None or cid in out:
                continue
            resp, err = line.get("response") or {}, line.get("error")
            rid = resp.get("request_id")
            if resp.get("status_code") == 200 and not err:
                cc = ChatCompletion.model_validate(resp.get("body") or {})
                texts = [((c.message.content or "") if c.message else "", c.finish_reason or "stop") for c in cc.choices or []]
                res = self.teacher._result(cc, texts)
                samples, cost = self._samples(res, item, batch_id)
                out[cid] = ItemResult(cid, "succeeded", samples, cost, res.input_tokens + res.cache_read_tokens,
                                      res.output_tokens, request_id=rid or res.request_id or None)
                continue
            e = err or (resp.get("body") or {}).get("error") or {}
            code = str(e.get("code") or e.get("type") or resp.get("status_code") or "error")
            status = "expired" if code == "batch_expired" else "canceled" if code == "batch_cancelled" else "errored"
            out[cid] = ItemResult(cid, status, error=f"{code}: {e.get('message', '')}", request_id=rid)  # type: ignore[arg-type]
        fate = {"expired": "expired", "cancelled": "canceled"}.get(b.status, "errored")
        why = b.status
        if b.status == "failed" and getattr(b, "errors", None) and b.errors.data:
            why = "; ".join(f"{e.code}: {e.message}" for e in b.errors.data)[:500]
        for cid in by_id:
            if cid not in out:
                out[cid] = ItemResult(cid, fate, error=f"batch {why}")  # type: ignore[arg-type]
        return [out[cid] for cid in by_id]

    async def cancel(self, batch_id: str) -> None:
        await self._call(lambda: self._client().batches.cancel(batch_id), "cancel", batch_id)

    async def find(self, tag: str, items: int, since: float, known: set[str]) -> str | None:
        async def page() -> list[Any]:
            return list((await self._client().batches.list(limit=100)).data)

        for b in await self._call(page, "list"):
            if (b.metadata or {}).get("omniopd_job") == tag:
                return b.id
        return None
