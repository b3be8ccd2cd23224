"""Teacher wrappers that sit beside `CachedTeacher`: the replay-miss policy and the spend limit.

Each is itself a `providers.base.Teacher` wrapping another one, so the pipeline composes them
and never carries either policy itself:

    SpendLimit(ReplayMisses(CachedTeacher(real teacher or none), strict), max_usd)

- `ReplayMisses`: on replay, a fork whose samples were never recorded raises `CacheMissError`
  in the cache. Not strict (the default), the error goes up counted and the pipeline drops the
  fork from the step; strict (`--strict-replay`), it becomes a `ReplayError` that stops the run.
- `SpendLimit`: adds up what fresh samples cost (`cost_usd` of samples not served from the
  cache) and, through `check()`, refuses to start a step once the total reached `max_usd`
  (`BudgetExceededError`: the run stops cleanly and can be resumed). The check runs once per
  step, before that step's requests go out, so a step that started always finishes. The hard
  cap is the run's spend ledger (`omniopd/spend.py`, reserve before a call, settle after, shared
  by all processes); this per-process total is what `Pipeline.spent_usd` and `BudgetStop` read,
  and a `Pipeline` built without a ledger (tests, scripts) still stops at `max_usd` through it.
"""

from __future__ import annotations

from typing import Any

from omniopd.errors import BudgetExceededError, CacheMissError, ReplayError
from providers.base import Teacher, TeacherRequest, TeacherSample


class _Wrapper:
    """Delegates the `Teacher` protocol to `inner`."""

    def __init__(self, inner: Teacher) -> None:
        self.inner = inner
        self.spec = inner.spec

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    async def aclose(self) -> None:
        await self.inner.aclose()


class ReplayMisses(_Wrapper):
    """Counts forks the recorded run never bought; `strict` turns them into a `ReplayError`."""

    def __init__(self, inner: Teacher, *, strict: bool) -> None:
        super().__init__(inner)
        self.strict = strict
        self.missed = 0

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        try:
            return await self.inner.sample(request)
        except CacheMissError as exc:
            self.missed += 1
            if self.strict:
                raise ReplayError(f"--strict-replay: {exc}. Drop --strict-replay to skip such forks, or replay with "
                                  "the scheduler and teacher settings of the recorded run") from exc
            raise


class SpendLimit(_Wrapper):
    """Totals fresh teacher spend; `check()` stops a step from starting past `max_usd` (None: no limit)."""

    def __init__(self, inner: Teacher, max_usd: float | None) -> None:
        super().__init__(inner)
        self.max_usd = max_usd
        self.spent_usd = 0.0

    def check(self) -> None:
        if self.max_usd is not None and self.spent_usd >= self.max_usd:
            raise BudgetExceededError(
                f"teacher spend ${self.spent_usd:.4f} reached --max-teacher-usd {self.max_usd}; "
                "the run stopped cleanly — raise the limit and rerun with --resume to continue"
            )

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        out = await self.inner.sample(request)
        self.spent_usd += sum(s.cost_usd for s in out if not s.cached)
        return out
