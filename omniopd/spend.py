"""`BudgetedTeacher`: every teacher request reserves its worst case in the spend ledger first.

It wraps the real teacher (inside `CachedTeacher`, so cache hits never reach it and cost
nothing) and, for each request:

1. asks the teacher for the request's worst-case cost (`teacher.worst_case_usd(request)`:
   prompt bound + max output tokens x N at the capability table's prices; teachers without
   prices, and local models, cost 0);
2. reserves it in the `SpendLedger` — refused with `BudgetExceededError` (nothing is sent)
   when it could take the run's total over `--max-teacher-usd`;
3. runs the request under a `providers.usage.billing()` bill, so calls whose answers were
   dropped (empty, blocked, too long) are paid for too, and settles the reservation with the
   billed cost and the number of samples bought.

A request that fails with a `TeacherError` settles what its calls were billed (0 when the
server answered with errors only: providers bill no failed call). A request cancelled or
broken mid-flight (SIGINT, a bug) may have been billed without our seeing the usage, so its
reservation is settled at the worst case: the ledger never under-states spend.

Anything else (`spec`, `identity()`, `usage_totals()`, `model`, `fell_back`, ...) is the inner
teacher's: the wrapper is transparent to the pipeline, the cache and the white-box methods.
"""

from __future__ import annotations

import asyncio
from typing import Any

from omniopd.errors import TeacherError
from omniopd.ledger import SpendLedger
from providers.base import Teacher, TeacherRequest, TeacherSample
from providers.usage import billing


def worst_case_usd(teacher: Teacher, request: TeacherRequest) -> float:
    """The teacher's own worst-case estimate; 0 for teachers that bill nothing (no estimate)."""
    estimate = getattr(teacher, "worst_case_usd", None)
    return float(estimate(request)) if estimate is not None else 0.0


class BudgetedTeacher:
    """A `Teacher` whose requests are paid through a `SpendLedger` (see the module docstring)."""

    def __init__(self, teacher: Teacher, ledger: SpendLedger) -> None:
        self.inner = teacher
        self.ledger = ledger

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "ledger"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"BudgetedTeacher({self.inner!r}, cap={self.ledger.cap_usd})"

    @property
    def spec(self) -> str:  # type: ignore[override]
        return self.inner.spec

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        worst = worst_case_usd(self.inner, request)
        if worst == 0.0:  # a free teacher (local model, self-hosted server): no reservation, no thread hop,
            return await self._free(request)  # so requests of one tick still micro-batch
        rid = await asyncio.to_thread(self.ledger.reserve, worst, self.inner.spec)
        with billing() as bill:
            try:
                samples = await self.inner.sample(request)
            except TeacherError:
                self.ledger.settle(rid, bill.cost_usd, 0) if bill.calls else self.ledger.release(rid)
                raise
            except BaseException:
                self.ledger.settle(rid, worst, 0)  # may have been billed unseen
                raise
        actual = bill.cost_usd if bill.calls else sum(s.cost_usd for s in samples)
        await asyncio.to_thread(self.ledger.settle, rid, actual, len(samples))
        return samples

    async def _free(self, request: TeacherRequest) -> list[TeacherSample]:
        with billing() as bill:
            samples = await self.inner.sample(request)
        actual = bill.cost_usd if bill.calls else sum(s.cost_usd for s in samples)
        if actual > 0:  # it billed after all: on the record (reserving 0 never fails)
            rid = await asyncio.to_thread(self.ledger.reserve, 0.0, self.inner.spec)
            await asyncio.to_thread(self.ledger.settle, rid, actual, len(samples))
        return samples

    async def aclose(self) -> None:
        await self.inner.aclose()
