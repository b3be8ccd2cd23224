"""Running usage and cost totals of one teacher, for the end-of-run summary.

Samples carry their own share of a call's usage (`TeacherSample.input_tokens` etc.: a request
that returned n samples splits its billed prompt across them), so totals are plain sums over
samples, plus counters for calls, retries and dropped samples that no sample can carry.

`billing()`/`charge()` give a caller the billed cost of one logical request (the spend ledger
settles reservations with it), and `prompt_tokens_upper_bound` bounds a prompt's tokens when
no tokenizer is at hand (the ledger's worst-case reservation).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

from providers.base import TeacherSample


@dataclass
class UsageTotals:
    requests: int = 0
    retries: int = 0
    samples: int = 0
    failed_samples: int = 0
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cache_read_tokens: float = 0.0
    cache_write_tokens: float = 0.0
    cost_usd: float = 0.0
    scored_tokens: float = 0.0  # tokens a white-box teacher scored (OPD-type methods; local teachers)

    def add_samples(self, samples: Iterable[TeacherSample]) -> None:
        for s in samples:
            self.samples += 1
            self.input_tokens += s.input_tokens
            self.output_tokens += s.output_tokens
            self.cache_read_tokens += s.cache_read_tokens
            self.cache_write_tokens += s.cache_write_tokens
            self.cost_usd += s.cost_usd

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        for k in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            d[k] = round(d[k], 3)
        d["cost_usd"] = round(d["cost_usd"], 8)
        return d

    def merged(self, other: "UsageTotals") -> "UsageTotals":
        a, b = asdict(self), asdict(other)
        return UsageTotals(**{k: a[k] + b[k] for k in a})


@dataclass
class Bill:
    """What one logical request was billed, call by call (see `billing`)."""

    cost_usd: float = 0.0
    calls: int = 0


_BILL: contextvars.ContextVar[Bill | None] = contextvars.ContextVar("omniopd_bill", default=None)


@contextlib.contextmanager
def billing() -> Iterator[Bill]:
    """Collect the cost of every billed call made inside the block (and in tasks it starts).

    A caller that must know what a request really cost — including calls whose answer was
    dropped (blocked, empty, invalid) and so is on no sample — opens a bill around
    `teacher.sample(...)`; clients `charge` each billed call to the bill of the current context.
    """
    bill = Bill()
    token = _BILL.set(bill)
    try:
        yield bill
    finally:
        _BILL.reset(token)


def charge(cost_usd: float) -> None:
    """Add one billed call to the current context's bill, if any."""
    bill = _BILL.get()
    if bill is not None:
        bill.cost_usd += cost_usd
        bill.calls += 1


def prompt_tokens_upper_bound(texts: Iterable[str], messages: int) -> int:
    """A bound on a prompt's token count with no tokenizer at hand.

    Every token of a byte-level BPE (GPT, Claude, Gemini, Llama 3, ...) or a SentencePiece
    vocabulary with byte fallback covers at least one byte of UTF-8, so the byte count bounds
    the text's tokens; each message adds role and separator tokens, for which 8 per message
    and 16 per request are allowed. English prose is ~4 bytes per token, so this over-states a
    prompt about 4x: the price of a bound that holds for any text (digits, CJK, emoji).
    """
    return sum(len(t.encode("utf-8")) for t in texts) + 8 * messages + 16
