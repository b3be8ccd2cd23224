"""`FallbackTeacher`: an API teacher that hands over to a local one instead of failing.

When the API key is missing, rejected (`TeacherAuthError`), or the API stays down past its
retry deadline (`TeacherUnavailableError`), the run continues on the configured local teacher
(`--fallback-teacher`): the switch is logged once (warning), sticks for the rest of the run,
and every sample names the teacher that produced it (`TeacherSample.teacher`). The local
teacher is built only if it is needed (loading a model takes a while). Quota and capability
errors are not outages: they propagate, because the user has to act on them.

`identity()` is the active teacher's: after a switch, cache keys name the local teacher.
`--no-fallback` is handled by not wrapping at all (errors then propagate).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from omniopd.errors import TeacherAuthError, TeacherUnavailableError
from providers.base import Teacher, TeacherRequest, TeacherSample

log = logging.getLogger("omniopd.providers")

FALLBACK_ERRORS = (TeacherAuthError, TeacherUnavailableError)


class FallbackTeacher:
    """Wrap `primary` (None when it could not even be built, e.g. no key) with a lazy fallback."""

    def __init__(self, primary: Teacher | None, fallback_factory: Callable[[], Teacher], *, spec: str,
                 fallback_spec: str, reason: str | None = None) -> None:
        self.spec = spec
        self.fallback_spec = fallback_spec
        self._primary = primary
        self._factory = fallback_factory
        self._fallback: Teacher | None = None
        self.fallback_reason: str | None = None
        if primary is None:
            self._switch(reason or "the API teacher is unavailable")

    def __repr__(self) -> str:
        return f"FallbackTeacher(spec={self.spec!r}, fallback={self.fallback_spec!r}, active={self.active_spec!r})"

    @property
    def fell_back(self) -> bool:
        return self.fallback_reason is not None

    @property
    def active_spec(self) -> str:
        return self.fallback_spec if self.fell_back else self.spec

    def _switch(self, reason: str) -> None:
        if self.fallback_reason is None:
            self.fallback_reason = reason
            log.warning("teacher %s unavailable (%s); continuing on the fallback teacher %s "
                        "(use --no-fallback to fail instead)", self.spec, reason, self.fallback_spec)

    def _fallback_teacher(self) -> Teacher:
        if self._fallback is None:
            self._fallback = self._factory()
        return self._fallback

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        if not self.fell_back and self._primary is not None:
            try:
                return await self._primary.sample(request)
            except FALLBACK_ERRORS as exc:
                self._switch(str(exc))
        samples = await self._fallback_teacher().sample(request)
        for s in samples:
            s.teacher = s.teacher or self.fallback_spec
            s.extra.setdefault("fallback_for", self.spec)
        return samples

    def worst_case_usd(self, request: TeacherRequest) -> float:
        """The active teacher's worst case (a local fallback costs nothing)."""
        active = self._fallback if self.fell_back else self._primary
        estimate = getattr(active, "worst_case_usd", None)
        return float(estimate(request)) if estimate is not None else 0.0

    def identity(self) -> dict[str, Any]:
        if self.fell_back:
            return self._fallback_teacher().identity()
        assert self._primary is not None
        return self._primary.identity()

    def usage_totals(self) -> dict[str, Any]:
        out: dict[str, Any] = {"teacher": self.spec, "fell_back": self.fell_back}
        if self.fallback_reason:
            out["fallback_reason"] = self.fallback_reason
        for name, t in (("primary", self._primary), ("fallback", self._fallback)):
            totals = getattr(t, "usage_totals", None) if t is not None else None
            if totals is not None:
                out[name] = totals()
        out["cost_usd"] = sum(out[k].get("cost_usd", 0.0) for k in ("primary", "fallback") if k in out)
        return out

    async def aclose(self) -> None:
        for t in (self._primary, self._fallback):
            if t is not None:
                await t.aclose()
