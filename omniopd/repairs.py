"""Buying first-error repairs of the student's wrong answers, concurrently, one per answer.

The request and its parser live in `providers/repair.py` (any teacher can answer them); this module
sends a batch of them through the run's teacher stack and sorts the answers into usable repairs and
per-sample failures. A failure — the request failed past the teacher's retries, or the answer broke
the format (`RepairFormatError`) — costs only its own sample: the caller decides what to buy instead
(`--sft-repair` buys a whole solution). A spend-cap stop (`BudgetExceededError`) propagates, as in
`omniopd.solutions`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from omniopd.errors import BudgetExceededError, TeacherError, TeacherResponseError
from providers.base import Teacher, TeacherSample
from providers.local import messages_from_chat
from providers.repair import Repair, parse_repair, repair_request

log = logging.getLogger("omniopd")


@dataclass
class RepairOutcome:
    """One repair request's result: the teacher's sample (None when the request itself failed; a
    sample whose answer failed to parse was still paid for) and the validated `repair`, or the
    `error` that stopped it."""

    sample: TeacherSample | None
    repair: Repair | None = None
    error: TeacherError | None = None


async def buy_repairs(teacher: Teacher, items: Sequence[tuple[list[dict[str, str]], str]], *, max_tokens: int,
                      temperature: float | None = None) -> list[RepairOutcome]:
    """One repair per (chat prompt, the student's wrong answer to it), in order."""

    async def one(prompt: list[dict[str, str]], answer: str) -> RepairOutcome:
        try:
            request = repair_request(messages_from_chat(prompt), answer, max_tokens=max_tokens, temperature=temperature)
        except ValueError as exc:  # no user turn / no line to repair: nothing is sent
            return RepairOutcome(None, error=TeacherResponseError(str(exc)))
        try:
            samples = await teacher.sample(request)
        except BudgetExceededError:
            raise
        except TeacherError as exc:
            log.warning("teacher repair failed for a prompt: %s", exc)
            return RepairOutcome(None, error=exc)
        if not samples:
            return RepairOutcome(None, error=TeacherResponseError("the teacher returned no repair sample"))
        sample = samples[0]
        try:
            return RepairOutcome(sample, parse_repair(sample.text, answer, provider=sample.teacher.split(":")[0]))
        except TeacherError as exc:
            log.warning("teacher repair answer unusable: %s", exc)
            return RepairOutcome(sample, error=exc)

    return list(await asyncio.gather(*(one(p, a) for p, a in items)))
