"""The in-process teacher: a transformers causal LM continuing the student's prefix.

Continuation mode "raw": the prompt messages plus the prefix as a partial assistant turn are
rendered with the teacher's own chat template (`continue_final_message=True`), so the model
continues the exact text — no instruction wrapper, samples are exact. N samples come from one
`generate` with `num_return_sequences`; requests that arrive together (the pipeline sends one
per audited chunk, concurrently) are micro-batched into one left-padded `generate`, which is
~3x the throughput of one request at a time on CPU. Generation runs in a worker thread so the
event loop (and API teachers sharing it) keep going. Answers pass the same check as every API
teacher's (`providers/validation.py`): an empty continuation is not a sample.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import torch

from providers.base import Message, TeacherRequest, TeacherSample, stable_hash
from providers.eos import eos_token_ids
from providers.usage import UsageTotals
from providers.validation import rejection


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of the weights (shapes + the first values of every tensor) for cache keys."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class LocalTeacher:
    """Teacher protocol over an in-memory model + tokenizer (see module docstring)."""

    def __init__(self, model, tokenizer, *, spec: str = "local", max_batch_rows: int = 64, torch_lock: Any = None):
        self.spec = spec
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self._queue: list[tuple[TeacherRequest, asyncio.Future]] = []
        self._flushing = False
        self._identity = {
            "provider": "local",
            "model": spec,
            "weights": weights_fingerprint(model),
            "mode": "raw",
            "template_hash": stable_hash(getattr(tokenizer, "chat_template", None) or "")[:16],
        }
        self._eos = sorted(eos_token_ids(model, tokenizer))
        self._totals = UsageTotals()

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def usage_totals(self) -> dict[str, float]:
        return self._totals.as_dict()

    def record_scored_tokens(self, n: int) -> None:
        """White-box use (providers/whitebox.py): completion tokens this model scored for OPD-type methods."""
        self._totals.scored_tokens += float(n)

    async def aclose(self) -> None:
        return None

    def worst_case_usd(self, request: TeacherRequest) -> float:
        """An in-process model bills nothing."""
        return 0.0

    def render(self, request: TeacherRequest) -> str:
        """The exact text the model continues: chat template + the partial assistant turn."""
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]
        if request.prefix:
            msgs.append({"role": "assistant", "content": request.prefix})
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, continue_final_message=True)
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((request, fut))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let every request issued in the same tick join the batch
        try:
            while self._queue:
                # one batch: requests with identical generation settings, up to max_batch_rows rows
                key = _gen_key(self._queue[0][0])
                batch, rest, rows = [], [], 0
                for req, fut in self._queue:
                    if _gen_key(req) == key and (rows + req.n <= self.max_batch_rows or not batch):
                        batch.append((req, fut))
                        rows += req.n
                    else:
                        rest.append((req, fut))
                self._queue = rest
                try:
                    results = await asyncio.to_thread(self._generate, [r for r, _ in batch])
                except Exception as exc:  # noqa: BLE001 - delivered to every waiting caller
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), res in zip(batch, results):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._flushing = False

    @torch.no_grad()
    def _generate(self, requests: list[TeacherRequest]) -> list[list[TeacherSample]]:
        t0 = time.perf_counter()
        tok, first = self.tokenizer, requests[0]
        texts = [self.render(r) for r in requests for _ in range(r.n)]
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        device = next(self.model.parameters()).device
        enc = enc.to(device)
        out = self.model.generate(
            **enc,
            do_sample=True,
            temperature=1.0 if first.temperature is None else max(first.temperature, 1e-5),
            top_p=1.0 if first.top_p is None else first.top_p,
            top_k=0,
            max_new_tokens=first.max_tokens,
            eos_token_id=self._eos,
            pad_token_id=tok.pad_token_id,
            stop_strings=list(first.stop) or None,
            tokenizer=tok if first.stop else None,
        )
        gen = out[:, enc["input_ids"].size(1):]
        latency = time.perf_counter() - t0
        prompt_lens = enc["attention_mask"].sum(-1).tolist()
        samples: list[TeacherSample | None] = []
        for row, ids in enumerate(gen.tolist()):
            finish, n_out = "length", len(ids)
            for j, t in enumerate(ids):
                if t in self._eos:
                    finish, n_out = "stop", j + 1
                    ids = ids[:j]
                    break
            text = tok.decode(ids, skip_special_tokens=True)
            if first.stop:
                for s in first.stop:
                    if s in text:
                        text, finish = text[: text.index(s)], "stop"
            if rejection(text, first.max_tokens) is not None:  # an immediate end of turn: not a sample
                samples.append(None)
                continue
            samples.append(TeacherSample(
                text=text, finish_reason=finish, input_tokens=float(prompt_lens[row]), output_tokens=float(n_out),
                model=self.spec, teacher=self.spec, latency_s=latency, exact=True,
            ))
        kept = [s for s in samples if s is not None]
        self._totals.requests += len(requests)
        self._totals.failed_samples += len(samples) - len(kept)
        self._totals.add_samples(kept)
        grouped, i = [], 0
        for r in requests:
            grouped.append([s for s in samples[i:i + r.n] if s is not None])
            i += r.n
        return grouped


def _gen_key(r: TeacherRequest) -> tuple:
    return (r.max_tokens, r.temperature, r.top_p, r.stop)


def messages_from_chat(chat: list[dict]) -> tuple[Message, ...]:
    """TRL-style message dicts -> the provider records."""
    return tuple(Message(m["role"], m["content"]) for m in chat)
