"""The teacher interface (DESIGN §3): requests in, text samples out.

A `TeacherRequest` says everything that defines the sampling distribution except who the
teacher is: the prompt messages, the assistant text to continue (`prefix`), how many samples,
the chunk bound and the sampling settings. A `Teacher` turns one request into up to `n`
`TeacherSample`s. Fewer than `n` is allowed (a sample that failed is dropped, not faked): the
scorer uses N_eff = len(samples).

`Teacher.identity()` returns the part of the cache key the teacher owns (provider, endpoint,
model, API version, continuation mode, template hash) — the cache never needs to know what a
provider is beyond that record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: Role
    content: str


@dataclass(frozen=True)
class TeacherRequest:
    """What to continue, how many times, and how far.

    `prefix` is the student's partial answer (no trailing-whitespace rules here: each client
    strips and reconciles as its API requires). `max_tokens` bounds each continuation in the
    teacher's own tokens; `stop` are extra stop strings. `temperature=None` means the
    provider's default (clients that the capability table marks as not accepting sampling
    parameters send none at all).
    """

    messages: tuple[Message, ...]
    prefix: str
    n: int
    max_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"TeacherRequest.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"TeacherRequest.max_tokens must be >= 1, got {self.max_tokens}")

    def fingerprint(self) -> dict[str, Any]:
        """The request's share of the cache key: everything except `n` (samples pool across n)."""
        d = asdict(self)
        d.pop("n")
        return d

    def with_n(self, n: int) -> "TeacherRequest":
        return TeacherRequest(self.messages, self.prefix, n, self.max_tokens, self.stop, self.temperature, self.top_p)


@dataclass
class TeacherSample:
    """One teacher continuation of a prefix, as text, with its accounting.

    `exact` is False when the continuation came through an instruction wrapper (the model was
    asked to continue rather than made to): such samples are approximate. `teacher` names who
    produced it (the spec, e.g. `anthropic:claude-haiku-4-5` or `local:…`), so fallback samples
    stay distinguishable. Usage fields are per sample: a request that returned n samples
    with one billed prompt splits the input tokens across them (so sums stay right).

    `cache_id` (the sample's stable uid, hex) and `cached` (served from the store, so already
    paid for) are set by the sample cache on the way out and never stored; a teacher without a
    cache leaves them `None` / `False`.
    """

    text: str
    finish_reason: str = "stop"
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cache_read_tokens: float = 0.0
    cache_write_tokens: float = 0.0
    cost_usd: float = 0.0
    model: str = ""
    teacher: str = ""
    latency_s: float = 0.0
    exact: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    cache_id: str | None = None


@runtime_checkable
class Teacher(Protocol):
    """An async teacher. Implementations own retries, rate limits and accounting."""

    spec: str

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        """Return up to `request.n` continuations of `request.prefix` (fewer on partial failure)."""
        ...

    def identity(self) -> dict[str, Any]:
        """What defines this teacher's sampling distribution, for the cache key."""
        ...

    async def aclose(self) -> None:
        """Release clients and models."""
        ...


def stable_hash(obj: Any) -> str:
    """A sha256 over canonical JSON: the same logical value always hashes the same."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
