"""The batch journal: what `omniopd collect --batch` has submitted, so nothing is paid for twice.

One SQLite file (`<collect dir>/batches.sqlite`, WAL) with two tables:

- `jobs`: one row per batch we submit — our `job` id, the provider, the provider's `batch_id`,
  the spend-ledger reservation that pays for it, its `state`, the provider's last status and
  counts, and once it ended what it cost (paid, and the live-price equivalent) and its tokens;
- `items`: one row per request in a job — `custom_id`, the cache `key` its samples belong to,
  the request itself (as JSON), `k` samples asked, and its outcome.

Job states, each written before the step it names is taken, so a process killed anywhere
(kill -9 included) leaves a journal that says what to do next:

    planned     reservation made, items recorded; the batch was NOT sent (resume: drop it)
    submitting  the create call may have reached the provider, its id is unknown (resume:
                counted as possibly paid at its worst case, its items planned again)
    submitted   the provider has it (`batch_id`); resume polls it, never resubmits
    done        its results are in the sample cache and its reservation settled

Items are `pending` until their job's results are read, then `stored`, `errored`, `expired`
or `canceled`. Storing samples and recording it are two files, so storing is idempotent
instead: sample uids derive from (batch id, custom id, index) (`providers.batch_base.sample_uid`)
and the cache skips uids it has. Every write is one transaction (`BEGIN IMMEDIATE`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omniopd.errors import CacheError
from providers.base import Message, TeacherRequest

JOURNAL_FILE = "batches.sqlite"
OPEN_STATES = ("planned", "submitting", "submitted")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        job TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        spec TEXT NOT NULL,
        batch_id TEXT,
        state TEXT NOT NULL CHECK (state IN ('planned', 'submitting', 'submitted', 'done', 'lost')),
        reservation INTEGER,
        worst_usd REAL NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        raw_status TEXT NOT NULL DEFAULT '',
        counts TEXT NOT NULL DEFAULT '{}',
        paid_usd REAL NOT NULL DEFAULT 0,
        live_usd REAL NOT NULL DEFAULT 0,
        input_tokens REAL NOT NULL DEFAULT 0,
        output_tokens REAL NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS items (
        job TEXT NOT NULL REFERENCES jobs(job),
        custom_id TEXT NOT NULL,
        key BLOB NOT NULL,
        request TEXT NOT NULL,
        k INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        error TEXT,
        request_id TEXT,
        PRIMARY KEY (job, custom_id)
    )""",
    "CREATE INDEX IF NOT EXISTS items_pending ON items (key) WHERE state = 'pending'",
)


def request_to_json(request: TeacherRequest) -> str:
    return json.dumps(asdict(request), sort_keys=True, ensure_ascii=False)


def request_from_json(text: str) -> TeacherRequest:
    d = json.loads(text)
    return TeacherRequest(messages=tuple(Message(**m) for m in d["messages"]), prefix=d["prefix"], n=d["n"],
                          max_tokens=d["max_tokens"], stop=tuple(d.get("stop") or ()), temperature=d.get("temperature"),
                          top_p=d.get("top_p"))


@dataclass(frozen=True)
class JobItem:
    """One request of a job, as journalled."""

    custom_id: str
    key: bytes
    request: TeacherRequest
    k: int
    state: str = "pending"
    error: str | None = None


@dataclass(frozen=True)
class Job:
    job: str
    provider: str
    spec: str
    batch_id: str | None
    state: str
    reservation: int | None
    worst_usd: float
    created: float
    raw_status: str
    counts: dict[str, Any]
    paid_usd: float
    live_usd: float
    input_tokens: float
    output_tokens: float


class BatchJournal:
    """See the module docstring. One connection; use it from one thread at a time."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout_s: float = 60.0,
                 exclusive: bool = False) -> None:
        """`exclusive`: hold `<path>.lock` (flock) while open, so a second `omniopd collect` on the
        same directory stops at once instead of racing this one (the OS drops it if we are killed)."""
        self.path = Path(path)
        self.clock = clock
        self._lock_fd: int | None = None
        if self.path.is_dir():
            raise CacheError(f"batch journal {self.path} is a directory; pass --collect-dir DIR (the journal is a file in it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if exclusive:
            self._lock()
        try:
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=busy_timeout_s)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")  # a commit survives kill -9
            with self._tx() as c:
                for stmt in _SCHEMA:
                    c.execute(stmt)
        except sqlite3.Error as exc:
            raise CacheError(f"batch journal {self.path} cannot be opened ({exc}); it must be a writable SQLite file. "
                             "It records batches already paid for: move it aside only after they were collected") from exc

    # --- writes, one transaction each -----------------------------------------------------------
    def add_job(self, job: str, provider: str, spec: str, items: Sequence[JobItem], worst_usd: float, reservation: int | None) -> None:
        now = self.clock()
        with self._tx() as c:
            c.execute("INSERT INTO jobs (job, provider, spec, state, reservation, worst_usd, created, updated) "
                      "VALUES (?, ?, ?, 'planned', ?, ?, ?, ?)", (job, provider, spec, reservation, worst_usd, now, now))
            c.executemany("INSERT INTO items (job, custom_id, key, request, k) VALUES (?, ?, ?, ?, ?)",
                          [(job, it.custom_id, it.key, request_to_json(it.request), it.k) for it in items])

    def set_state(self, job: str, state: str, batch_id: str | None = None) -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET state = ?, batch_id = coalesce(?, batch_id), updated = ? WHERE job = ?",
                      (state, batch_id, self.clock(), job))

    def drop_job(self, job: str) -> None:
        """Forget a job that was never sent (`planned`)."""
        with self._tx() as c:
            c.execute("DELETE FROM items WHERE job = ?", (job,))
            c.execute("DELETE FROM jobs WHERE job = ? AND state = 'planned'", (job,))

    def record_status(self, job: str, raw: str, counts: dict[str, Any]) -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET raw_status = ?, counts = ?, updated = ? WHERE job = ?",
                      (raw, json.dumps(counts, sort_keys=True), self.clock(), job))

    def finish(self, job: str, outcomes: Sequence[tuple[str, str, str | None, str | None]], *, paid_usd: float,
               live_usd: float, input_tokens: float, output_tokens: float, state: str = "done") -> None:
        """Record each item's outcome (custom_id, state, error, request id) and the job's cost."""
        with self._tx() as c:
            c.executemany("UPDATE items SET state = ?, error = ?, request_id = ? WHERE job = ? AND custom_id = ?",
                          [(st, err, rid, job, cid) for cid, st, err, rid in outcomes])
            c.execute("UPDATE jobs SET state = ?, paid_usd = ?, live_usd = ?, input_tokens = ?, output_tokens = ?, "
                      "updated = ? WHERE job = ?", (state, paid_usd, live_usd, input_tokens, output_tokens, self.clock(), job))

    # --- reads ------------------------------------------------------------------------------------
    def jobs(self, states: Sequence[str] | None = None) -> list[Job]:
        sql = "SELECT job, provider, spec, batch_id, state, reservation, worst_usd, created, raw_status, counts, paid_usd, " \
              "live_usd, input_tokens, output_tokens FROM jobs"
        params: tuple = ()
        if states is not None:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params = tuple(states)
        rows = self.conn.execute(sql + " ORDER BY created, job", params).fetchall()
        return [Job(*r[:9], json.loads(r[9]), *r[10:]) for r in rows]  # type: ignore[misc]

    def items(self, job: str) -> list[JobItem]:
        rows = self.conn.execute("SELECT custom_id, key, request, k, state, error FROM items WHERE job = ? ORDER BY rowid",
                                 (job,)).fetchall()
        return [JobItem(cid, key, request_from_json(req), k, st, err) for cid, key, req, k, st, err in rows]

    def in_flight(self) -> dict[bytes, int]:
        """Samples asked per cache key by items of jobs still open (so planning does not ask twice)."""
        rows = self.conn.execute(
            f"SELECT i.key, sum(i.k) FROM items i JOIN jobs j ON i.job = j.job "
            f"WHERE i.state = 'pending' AND j.state IN ({','.join('?' * len(OPEN_STATES))}) GROUP BY i.key",
            OPEN_STATES).fetchall()
        return {key: int(n) for key, n in rows}

    def known_reservations(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT reservation FROM jobs WHERE reservation IS NOT NULL")}

    def _lock(self) -> None:
        import fcntl
        import os

        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CacheError(f"another `omniopd collect` is using {self.path.parent} right now; wait for it to finish, "
                             "or pass another --collect-dir") from None
        self._lock_fd = fd

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()
        if self._lock_fd is not None:
            import os

            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> "BatchJournal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        c = self.conn
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise CacheError(f"batch journal {self.path}: cannot write ({exc})") from exc
        try:
            yield c
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
