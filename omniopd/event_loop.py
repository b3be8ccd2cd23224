"""The process's one asyncio event loop, on a thread of its own (DESIGN §2: one loop per process).

`process_loop()` is that loop: started on first use (never at import), stopped at exit. The
entry points (`omniopd.train.run_train`, `omniopd teacher`) take it and hand it to everything
that talks to a teacher: the pipeline, the method signals and the vLLM scorer. API clients,
the shared rate limiters (`providers.limits.default_registry`) and the sample cache's per-key
locks are then created on, and stay bound to, one loop for the process's whole life — so
nothing needs per-loop state, and several runs in one process (the lab, tests) share it.

The loop runs on a daemon thread, not on the caller's: the trainer's thread stays free to
generate rollouts or take an optimizer step while teacher requests are in flight (that is
what lets `--async-steps` overlap the teacher with the student). Synchronous code drives it
with `run(coro)` (submit and wait) or `submit(coro)` (a `concurrent.futures.Future`).

Coroutines run here must not block the loop with CPU work; hand such work to a thread
(`asyncio.to_thread` or an executor), as the pipeline does with its scorer.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoop:
    """One event loop on a background thread; `close()` (or a `with` block) stops it."""

    def __init__(self, name: str = "omniopd-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the loop; returns at once."""
        if self.closed:
            coro.close()
            raise RuntimeError("the event loop is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait for its result (its exception is raised here)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("EventLoop.run called from the loop's own thread: await the coroutine instead")
        return self.submit(coro).result()

    def close(self) -> None:
        """Cancel what is still running, stop the loop and join its thread (idempotent)."""
        if self.closed:
            return
        if self._thread.is_alive():
            async def _cancel_rest() -> None:
                rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in rest:
                    t.cancel()
                await asyncio.gather(*rest, return_exceptions=True)
                await self.loop.shutdown_asyncgens()
                await self.loop.shutdown_default_executor()

            asyncio.run_coroutine_threadsafe(_cancel_rest(), self.loop).result()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()

    def __enter__(self) -> "EventLoop":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_PROCESS: EventLoop | None = None
_PROCESS_LOCK = threading.Lock()


def process_loop() -> EventLoop:
    """The process's one event loop (started on first call; closed at interpreter exit, not before)."""
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None or _PROCESS.closed:
            _PROCESS = EventLoop()
            atexit.register(_PROCESS.close)
        return _PROCESS
