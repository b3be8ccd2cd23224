"""Client-side limits per (provider, model): requests in flight, requests/min, tokens/min.

One `Limits` object exists per (provider, model) in a `LimitsRegistry`, so every teacher
talking to the same model shares one budget. Admission happens once per logical request:
a retry after a 429 waits for the server's `retry-after` (see `providers/retry.py`) and keeps
its admission, so injected or real 429s do not consume a second rate token.

The rate limiters are token buckets whose clock and sleep are injectable (tests drive them
without a wall clock); a bucket holds at most one second's worth of tokens (`burst`), so the
achieved rate over any window longer than a second stays at or under the configured limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable


class TokenBucket:
    """A token bucket refilled at `rate_per_s`, holding at most `burst` tokens.

    `acquire(k)` waits until k tokens are available (k larger than the burst is admitted once
    the bucket is full, leaving a debt: a single big request is never refused forever).
    Waiters are served in arrival order (one lock).
    """

    def __init__(self, rate_per_s: float, burst: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0")
        self.rate = rate_per_s
        self.burst = max(1.0, burst if burst is not None else rate_per_s)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = asyncio.Lock()  # binds to the running event loop when first contended
        self._lock_loop: Any = None

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, k: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        if self._lock_loop is not loop:  # a later training in this process, on its own loop (see Limits.admit)
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            need = min(k, self.burst)
            while True:
                self._refill()
                if self._tokens >= need:
                    self._tokens -= k
                    return
                await self._sleep((need - self._tokens) / self.rate)


@dataclass
class Limits:
    """Concurrency + request rate + token rate for one (provider, model)."""

    concurrency: int
    rpm: float | None = None
    tpm: float | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    _sem: asyncio.Semaphore = field(init=False, repr=False)
    _sem_loop: Any = field(default=None, init=False, repr=False)
    _req: TokenBucket | None = field(default=None, init=False, repr=False)
    _tok: TokenBucket | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.concurrency)  # binds to the process's one event loop when first contended
        if self.rpm:
            self._req = TokenBucket(self.rpm / 60.0, clock=self.clock, sleep=self.sleep)
        if self.tpm:
            self._tok = TokenBucket(self.tpm / 60.0, clock=self.clock, sleep=self.sleep)

    @contextlib.asynccontextmanager
    async def admit(self, est_tokens: float = 0.0) -> AsyncIterator[None]:
        """Hold a concurrency slot for the body; pay one request token and `est_tokens` first."""
        loop = asyncio.get_running_loop()
        if self._sem_loop is not loop:
            # One event loop per process, but one process may run several trainings in turn (the lab,
            # tests, a notebook), each on its own loop: a semaphore bound to a finished loop would
            # raise, and no waiter can outlive that loop, so a fresh one loses nothing.
            self._sem = asyncio.Semaphore(self.concurrency)
            self._sem_loop = loop
        async with self._sem:
            if self._req is not None:
                await self._req.acquire(1.0)
            if self._tok is not None and est_tokens > 0:
                await self._tok.acquire(est_tokens)
            yield


class LimitsRegistry:
    """Shared `Limits` per (provider, model); the first teacher to ask sets the numbers."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self._by_key: dict[tuple[str, str], Limits] = {}
        self._clock = clock
        self._sleep = sleep

    def get(self, provider: str, model: str, *, concurrency: int, rpm: float | None, tpm: float | None) -> Limits:
        key = (provider, model)
        if key not in self._by_key:
            self._by_key[key] = Limits(concurrency, rpm, tpm, clock=self._clock, sleep=self._sleep)
        return self._by_key[key]


_DEFAULT: LimitsRegistry | None = None


def default_registry() -> LimitsRegistry:
    """The process-wide registry (created on first use, never at import)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LimitsRegistry()
    return _DEFAULT
