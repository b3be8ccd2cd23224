"""Whole teacher solutions: the one request every recipe that buys a full answer sends.

`--method sft`, SG-OPD's verified teacher rows and `omniopd collect --what solutions` all ask the
teacher for complete answers to a prompt (no student prefix). They build the request here, so
the sample cache keys them identically: a solution bought once — live, in a provider's batch, or
by another recipe — is never paid for again (`cache.teacher.request_key` hashes the request's
fingerprint: messages, empty prefix, max tokens, temperature; `n` is not in the key, samples pool).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from omniopd.errors import BudgetExceededError, TeacherError
from providers.base import Teacher, TeacherRequest, TeacherSample
from providers.local import messages_from_chat

log = logging.getLogger("omniopd")


def solution_request(prompt: list[dict[str, str]], *, n: int, max_tokens: int,
                     temperature: float | None = None) -> TeacherRequest:
    """The request for `n` whole teacher answers to one chat prompt (TRL-style message dicts)."""
    return TeacherRequest(messages=messages_from_chat(prompt), prefix="", n=n, max_tokens=max_tokens,
                          temperature=temperature)


async def sample_each(teacher: Teacher, requests: Sequence[TeacherRequest]) -> list[list[TeacherSample]]:
    """Each request's samples, concurrently (the teacher's own limits pace them).

    A request that fails past the teacher's retries yields an empty list (logged), so one bad
    prompt costs its own slots only; a spend-cap stop (`BudgetExceededError`) propagates.
    """

    async def one(request: TeacherRequest) -> list[TeacherSample]:
        try:
            return await teacher.sample(request)
        except BudgetExceededError:
            raise
        except TeacherError as exc:
            log.warning("teacher request failed: %s", exc)
            return []

    return list(await asyncio.gather(*(one(r) for r in requests)))


async def buy_solutions(teacher: Teacher, prompts: Sequence[list[dict[str, str]]], *, n: int, max_tokens: int,
                        temperature: float | None = None) -> list[list[TeacherSample]]:
    """`n` solutions per prompt (`sample_each` of their `solution_request`s)."""
    return await sample_each(teacher, [solution_request(p, n=n, max_tokens=max_tokens, temperature=temperature)
                                       for p in prompts])


def solution_summary(samples: Sequence[Sequence[TeacherSample]]) -> dict[str, Any]:
    """Counts for logs and metrics: prompts answered, samples, served from cache, USD paid."""
    flat = [s for row in samples for s in row]
    return {"prompts": len(samples), "answered": sum(1 for row in samples if row), "samples": len(flat),
            "cached": sum(1 for s in flat if s.cached), "usd": sum(s.cost_usd for s in flat if not s.cached)}
