"""Running usage and cost totals of one teacher, for the end-of-run summary.

Samples carry their own share of a call's usage (`TeacherSample.input_tokens` etc.: a request
that returned n samples splits its billed prompt across them), so totals are plain sums over
samples, plus counters for calls, retries and dropped samples that no sample can carry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

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
