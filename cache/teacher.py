"""`CachedTeacher`: every teacher call goes through the sample store.

It is itself a `providers.base.Teacher`, so the pipeline wraps the real teacher and never
knows the cache is there. For a request asking for n samples under key K:

1. read K's pool (stored samples plus any not yet written, oldest first) — reads of
   concurrent `sample()` calls in one event-loop turn are batched into one query;
2. serve up to n from the pool; call the inner teacher only for the shortfall;
3. hand the new samples to a writer thread that commits them in batched transactions
   (write-behind: a batch commits within `flush_interval_s`, or at once on `flush()`).

Calls for the same key are serialised, so concurrent forks with identical prefixes never pay
twice — within a process by a lock per key, across processes by a lease: in read-write mode a
process about to buy samples for a key first claims it in the store (`leases`, one batched
transaction per loop turn), renews the claim every `lease_s / 3` while its teacher works, and
drops it in the same transaction that commits the samples it bought. Another process wanting
the same key finds it claimed and waits (polling the pool) for those samples instead of buying
its own; a crashed holder stops renewing, so its lease runs out after at most `lease_s` and
the key is bought by whoever asks next. `lease_s=None` turns leases off. Every returned sample carries `cache_id` (its stable uid, hex), which episodes
record; samples served from the store also carry `cached=True` (already paid for: the spend
accounting leaves them out). Modes: `read-write` (the default), `read-only` (serve stored samples, call the
teacher for the rest, store nothing), `off` (call the teacher, store nothing; ids are still
assigned). With no inner teacher (replay), a request with no stored sample raises
`CacheMissError`; a partly stored pool is served as is (fewer than n samples, like a partial
teacher failure) and counted as a miss.

The key is `request_key(teacher.identity(), request)`: a 16-byte prefix of the sha256 over
the teacher's identity and the request fingerprint (everything but n).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from cache.store import KEY_BYTES, Entry, SampleStore
from omniopd.errors import CacheError, CacheMissError
from providers.base import Teacher, TeacherRequest, TeacherSample, stable_hash

CacheMode = Literal["read-write", "read-only", "off"]
CACHE_MODES: tuple[str, ...] = ("read-write", "read-only", "off")
_FLUSH = object()
_STOP = object()


def request_key(identity: dict[str, Any], request: TeacherRequest) -> bytes:
    """The content address of a request's sample pool."""
    return bytes.fromhex(stable_hash({"teacher": identity, "request": request.fingerprint()}))[:KEY_BYTES]


class _Writer:
    """A thread that commits submitted entries in batched transactions (write-behind)."""

    def __init__(self, store: SampleStore, flush_interval_s: float, max_batch: int) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.queue: queue.Queue = queue.Queue()
        self.cond = threading.Condition()
        self.pending: dict[bytes, list[Entry]] = {}
        self.unfinished = 0
        self.error: CacheError | None = None
        self.thread = threading.Thread(target=self._run, name="omniopd-cache-writer", daemon=True)
        self.thread.start()

    def submit(self, entries: Sequence[Entry], release: Sequence[tuple[bytes, str]] = ()) -> None:
        """Queue entries for the next commit; `release` leases are dropped in that same transaction."""
        with self.cond:
            for e in entries:
                self.pending.setdefault(e.key, []).append(e)
            self.unfinished += len(entries) + (1 if release else 0)
        self.queue.put(list(entries))
        if release:
            self.queue.put(_Release(list(release)))

    def pending_for(self, key: bytes) -> list[Entry]:
        with self.cond:
            return list(self.pending.get(key, ()))

    def flush(self, counters: dict[str, Any] | None = None, timeout: float | None = None) -> None:
        """Commit everything submitted so far (and the lookup counters); returns once on disk or failed."""
        with self.cond:
            self.unfinished += 1
        self.queue.put(_Counters(counters) if counters else _FLUSH)
        with self.cond:
            self.cond.wait_for(lambda: self.unfinished == 0, timeout=timeout)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.queue.put(_STOP)
            self.thread.join()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            batch: list[Entry] = []
            markers: list[Any] = []
            stop = False
            deadline = time.monotonic() + self.flush_interval_s
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, list):
                    batch.extend(item)
                else:
                    markers.append(item)
                # lease releases ride with the batch (write-behind); flushes and counters commit now
                if stop or any(not isinstance(m, _Release) for m in markers) or len(batch) >= self.max_batch:
                    break
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                try:
                    item = self.queue.get(timeout=wait)
                except queue.Empty:
                    break
            if stop:  # commit whatever was queued before the stop
                while not self.queue.empty():
                    item = self.queue.get_nowait()
                    (batch.extend if isinstance(item, list) else markers.append)(item)
            self._commit(batch, markers)
            if stop:
                return

    def _commit(self, batch: list[Entry], markers: list[Any]) -> None:
        release = [lease for m in markers if isinstance(m, _Release) for lease in m.leases]
        try:
            if batch or release:
                self.store.put_many(batch, release=release)
            for m in markers:
                if isinstance(m, _Counters):
                    self.store.record_lookups(**m.values)
        except CacheError as exc:  # surfaced to the caller on its next call
            self.error = exc
        with self.cond:
            for e in batch:
                pool = self.pending.get(e.key)
                if pool is not None:
                    pool[:] = [p for p in pool if p.uid != e.uid]
                    if not pool:
                        del self.pending[e.key]
            self.unfinished -= len(batch) + sum(m is not _STOP for m in markers)
            self.cond.notify_all()


@dataclasses.dataclass
class _Counters:
    values: dict[str, Any]


@dataclasses.dataclass
class _Release:
    leases: list[tuple[bytes, str]]  # (key, holder) to drop with the batch's commit


@dataclasses.dataclass
class _LoopState:
    """The asyncio bits: per-key locks and the reads queued this loop turn.

    One process runs one event loop (omniopd.event_loop), so one state serves every call. Locks
    live only while a key has callers, so loops run one after another (tests, scripts using
    `asyncio.run`) also work; two loops using one `CachedTeacher` at the same time do not.
    """

    locks: dict[bytes, asyncio.Lock] = dataclasses.field(default_factory=dict)
    users: dict[bytes, int] = dataclasses.field(default_factory=dict)
    reads: list[tuple[bytes, asyncio.Future]] = dataclasses.field(default_factory=list)
    read_scheduled: bool = False
    claims: list[tuple[bytes, asyncio.Future]] = dataclasses.field(default_factory=list)
    claim_scheduled: bool = False


class CachedTeacher:
    """A `Teacher` that serves stored samples first. See the module docstring."""

    def __init__(
        self,
        teacher: Teacher | None,
        store: SampleStore | str | Path | None,
        mode: CacheMode = "read-write",
        *,
        identity: dict[str, Any] | None = None,
        spec: str | None = None,
        flush_interval_s: float = 0.05,
        max_batch: int = 1024,
        uid_factory: Callable[[], bytes] = lambda: os.urandom(KEY_BYTES),
        clock: Callable[[], float] = time.time,
        session: str | None = None,
        remember: int = 50_000,
        lease_s: float | None = 60.0,
        poll_s: float = 0.02,
    ) -> None:
        if mode not in CACHE_MODES:
            raise CacheError(f"--cache-mode must be one of {', '.join(CACHE_MODES)}; got {mode!r}")
        if teacher is None and (identity is None or mode == "off"):
            raise CacheError("a CachedTeacher without a teacher (replay) needs the recorded teacher identity and a cache to read")
        if mode != "off" and store is None:
            raise CacheError(f"--cache-mode {mode} needs a cache path")
        self.inner = teacher
        self.mode = mode
        self._identity = identity if identity is not None else teacher.identity()  # type: ignore[union-attr]
        self.spec = spec or (teacher.spec if teacher is not None else str(self._identity.get("spec", "replay")))
        self.uid_factory = uid_factory
        self.clock = clock
        self.session = session or uuid.uuid4().hex
        self.started = clock()
        self.counts = {"requested": 0, "from_cache": 0, "from_teacher": 0, "misses": 0}
        self.lease_waits = 0  # times a key was found claimed by another process (waited, not bought)
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._leases: SampleStore | None = None
        self._lease_lock = threading.Lock()
        self._remember = remember
        self._served: OrderedDict[str, Entry] = OrderedDict()
        self._loop_state = _LoopState()
        self.store: SampleStore | None = None
        self._writer: _Writer | None = None
        if mode == "off":
            return
        if isinstance(store, SampleStore):
            self.store = store
        else:
            self.store = SampleStore(store, "read-write" if mode == "read-write" else "read-only", clock=clock)  # type: ignore[arg-type]
        if mode == "read-write":
            wstore = SampleStore(self.store.path, "read-write", clock=clock, busy_timeout_s=self.store.busy_timeout_s)
            self._writer = _Writer(wstore, flush_interval_s, max_batch)
            self._finalizer = weakref.finalize(self, _shutdown, self._writer)
            if lease_s is not None and teacher is not None:
                self._leases = SampleStore(self.store.path, "read-write", clock=clock, busy_timeout_s=self.store.busy_timeout_s)

    # --- Teacher protocol ---------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        return self._identity

    def key(self, request: TeacherRequest) -> bytes:
        # Key by who answers now: a teacher may change identity mid-run (a FallbackTeacher
        # switching to its local teacher), and fallback samples must not land in the API's pool.
        return request_key(self.inner.identity() if self.inner is not None else self._identity, request)

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        self._raise_writer_error()
        self.counts["requested"] += request.n
        if self.mode == "off":
            fresh = await self.inner.sample(request)  # type: ignore[union-attr]
            return self._adopt(self.key(request), fresh[: request.n])
        key = self.key(request)
        state = self._loop_state
        lock = state.locks.setdefault(key, asyncio.Lock())
        state.users[key] = state.users.get(key, 0) + 1
        try:
            async with lock:
                return await self._sample_locked(key, request, state)
        finally:
            state.users[key] -= 1
            if not state.users[key]:
                del state.users[key], state.locks[key]

    async def _sample_locked(self, key: bytes, request: TeacherRequest, state: _LoopState) -> list[TeacherSample]:
        wait = self.poll_s
        while True:
            have = await self._serve_stored(key, request, state)
            missing = request.n - len(have)
            if missing == 0 or self.inner is None or self._leases is None:
                break
            held_until = await self._claim(key, state)
            if held_until is None:  # ours now. Look again: a holder that committed between our read and
                have = await self._serve_stored(key, request, state)  # our claim left its samples
                missing = request.n - len(have)
                if missing == 0:
                    await asyncio.to_thread(self._lease_call, "release", [key])
                    break
                try:
                    fresh = await self._buy_holding(key, request.with_n(missing))
                except BaseException:
                    await asyncio.to_thread(self._lease_call, "release", [key])
                    raise
                self.counts["from_cache"] += len(have)
                self.counts["from_teacher"] += len(fresh)
                return have + self._adopt(self.key(request), fresh, release=[(key, self.session)])
            # another process is buying this key's samples: wait for them, then look again
            self.lease_waits += 1
            await asyncio.sleep(min(wait, max(0.0, held_until - self.clock()) + self.poll_s))
            wait = min(wait * 2, 0.5)
        return await self._finish(key, request, have)

    async def _finish(self, key: bytes, request: TeacherRequest, have: list[TeacherSample]) -> list[TeacherSample]:
        """Serve `have` and buy the rest without a lease (leases off, or nothing to buy)."""
        self.counts["from_cache"] += len(have)
        missing = request.n - len(have)
        if missing == 0:
            return have
        if self.inner is None:
            self.counts["misses"] += missing
            if not have:
                raise CacheMissError(
                    f"no stored teacher sample for this request (key {key.hex()}, prefix …{request.prefix[-40:]!r}); "
                    f"replay only serves what the recorded run bought"
                )
            return have
        fresh = (await self.inner.sample(request.with_n(missing)))[:missing]
        self.counts["from_teacher"] += len(fresh)
        return have + self._adopt(self.key(request), fresh)  # the key again: the teacher may have switched

    async def _buy_holding(self, key: bytes, request: TeacherRequest) -> list[TeacherSample]:
        """The inner teacher's samples, renewing our lease on `key` while it works.

        If the caller is cancelled meanwhile (a step abandoned because another request hit the
        spend cap), the purchase is not: requests already sent are paid for, so they run to
        the end and their samples are stored (and the lease dropped) when they arrive.
        """
        task = asyncio.ensure_future(self.inner.sample(request))  # type: ignore[union-attr]
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.lease_s / 3)  # type: ignore[operator]
                if done:
                    return task.result()[: request.n]
                await asyncio.to_thread(self._lease_call, "renew", [key])
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._adopt_late(key, request, t))  # runs soon if already done
            raise

    def _adopt_late(self, key: bytes, request: TeacherRequest, task: asyncio.Future) -> None:
        """Store what an abandoned purchase bought (see `_buy_holding`)."""
        fresh = [] if task.cancelled() or task.exception() is not None else task.result()[: request.n]
        if self._writer is not None:
            self.counts["from_teacher"] += len(fresh)
            self._adopt(self.key(request), fresh, release=[(key, self.session)])

    async def _serve_stored(self, key: bytes, request: TeacherRequest, state: _LoopState) -> list[TeacherSample]:
        """Up to n samples already stored (or queued for storing) under `key`."""
        stored = await self._lookup(key, state)
        pool = list(stored[: request.n])  # a lazy Pool: only the samples served are decoded
        if self._writer is not None and len(pool) < request.n:  # then `pool` is all that is stored
            seen = {e.uid for e in pool}
            pool += [Entry(e.key, e.uid, e.created, dataclasses.replace(e.sample, cached=True))
                     for e in self._writer.pending_for(key) if e.uid not in seen]
            pool = pool[: request.n]
        for e in pool:
            self._remember_entry(e)
        return [e.sample for e in pool]

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)
        if self.inner is not None:
            await self.inner.aclose()

    # --- flushing and closing -----------------------------------------------------------------
    def flush(self) -> None:
        """Block until every sample handed out so far is committed; record the lookup counters."""
        if self._writer is not None:
            self._writer.flush({"session": self.session, "started": self.started, **self.counts})
            self._raise_writer_error()

    async def aflush(self) -> None:
        await asyncio.to_thread(self.flush)

    def close(self) -> None:
        """Flush and release the store (the inner teacher is closed by `aclose`)."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._finalizer.detach()
                _shutdown(self._writer)
                self._writer = None
            if self.store is not None:
                self.store.close()
            with self._lease_lock:
                if self._leases is not None:
                    self._leases.close()
                    self._leases = None

    # --- samples by id (for the episode recorder) --------------------------------------------
    def entries_for(self, cache_ids: Sequence[str]) -> dict[str, Entry]:
        """The samples with these `cache_id`s that this teacher served or the store holds."""
        out = {cid: self._served[cid] for cid in cache_ids if cid in self._served}
        rest = [bytes.fromhex(cid) for cid in cache_ids if cid not in out]
        if rest and self.store is not None:
            out.update({uid.hex(): e for uid, e in self.store.by_uid(rest).items()})
        return out

    # --- internals ------------------------------------------------------------------------------
    def _adopt(self, key: bytes, fresh: list[TeacherSample], release: Sequence[tuple[bytes, str]] = ()) -> list[TeacherSample]:
        now = self.clock()
        entries = []
        # a pool is ordered by (time stored, uid): sorted uids keep one batch in the teacher's order
        for s, uid in zip(fresh, sorted(self.uid_factory() for _ in fresh)):
            s = dataclasses.replace(s, cache_id=uid.hex(), cached=False)
            entries.append(Entry(key, uid, now, s))
        for e in entries:
            self._remember_entry(e)
        if self._writer is not None and (entries or release):
            self._writer.submit(entries, release)
        return [e.sample for e in entries]

    def _remember_entry(self, entry: Entry) -> None:
        cid = entry.uid.hex()
        self._served[cid] = entry
        self._served.move_to_end(cid)
        while len(self._served) > self._remember:
            self._served.popitem(last=False)

    async def _lookup(self, key: bytes, state: _LoopState) -> Sequence[Entry]:
        """Queue a read; all reads queued in this loop turn run as one batched query."""
        fut = asyncio.get_running_loop().create_future()
        state.reads.append((key, fut))
        if not state.read_scheduled:
            state.read_scheduled = True
            asyncio.get_running_loop().call_soon(self._run_reads, state)
        return await fut

    def _run_reads(self, state: _LoopState) -> None:
        batch, state.reads, state.read_scheduled = state.reads, [], False
        try:
            found = self.store.pools([k for k, _ in batch])  # type: ignore[union-attr]
        except CacheError as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for k, fut in batch:
            if not fut.done():
                fut.set_result(found.get(k, ()))

    async def _claim(self, key: bytes, state: _LoopState) -> float | None:
        """Claim `key` (None: ours now; else when the other holder's lease ends). Claims queued
        in one loop turn share one transaction."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        state.claims.append((key, fut))
        if not state.claim_scheduled:
            state.claim_scheduled = True
            loop.call_soon(self._run_claims, state)
        return await fut

    def _run_claims(self, state: _LoopState) -> None:
        batch, state.claims, state.claim_scheduled = state.claims, [], False
        done = asyncio.get_running_loop().run_in_executor(None, self._lease_call, "claim", [k for k, _ in batch])

        def deliver(f: asyncio.Future) -> None:
            exc = f.exception()
            for k, fut in batch:
                if not fut.done():
                    fut.set_exception(exc) if exc is not None else fut.set_result(f.result()[k])

        done.add_done_callback(deliver)

    def _lease_call(self, what: str, keys: list[bytes]) -> Any:
        with self._lease_lock:
            if self._leases is None:
                return {k: None for k in keys}
            if what == "claim":
                return self._leases.claim(keys, self.session, self.lease_s)  # type: ignore[arg-type]
            if what == "renew":
                return self._leases.renew(keys, self.session, self.lease_s)  # type: ignore[arg-type]
            return self._leases.release(keys, self.session)

    def _raise_writer_error(self) -> None:
        if self._writer is not None and self._writer.error is not None:
            exc, self._writer.error = self._writer.error, None
            raise exc


def _shutdown(writer: _Writer) -> None:
    """Commit what is queued and stop the writer thread (also run at interpreter exit)."""
    writer.stop()
    writer.store.close()
