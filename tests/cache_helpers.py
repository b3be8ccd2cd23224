"""Shared pieces for the cache tests: an in-process teacher that counts what it is asked."""

from __future__ import annotations

import asyncio

from providers.base import Message, TeacherRequest, TeacherSample


class CountingTeacher:
    """A real `Teacher` (no network): deterministic texts, a log of every call and its n."""

    spec = "counting:m1"

    def __init__(self, model: str = "m1", fail_after: int | None = None, delay_s: float = 0.0):
        self.model = model
        self.calls: list[tuple[str, int]] = []
        self.fail_after = fail_after  # return only this many samples per call (partial failure)
        self.delay_s = delay_s
        self.closed = False

    def identity(self) -> dict:
        return {"provider": "counting", "model": self.model, "mode": "raw"}

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        self.calls.append((request.prefix, request.n))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        n = request.n if self.fail_after is None else min(request.n, self.fail_after)
        k = len(self.calls)
        return [
            TeacherSample(text=f"{request.prefix} -> continuation {k}.{i}", finish_reason="length", input_tokens=10.0,
                          output_tokens=5.0, cost_usd=0.001, model=self.model, teacher=self.spec, latency_s=0.01)
            for i in range(n)
        ]

    async def aclose(self) -> None:
        self.closed = True


def request(prefix: str, n: int = 3, question: str = "What is 2+2?") -> TeacherRequest:
    return TeacherRequest(messages=(Message("user", question),), prefix=prefix, n=n, max_tokens=16)
