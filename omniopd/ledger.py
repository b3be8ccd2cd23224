"""The run's spend ledger: a cap on teacher dollars that no request can cross.

A `SpendLedger` is one SQLite file in the run directory (`<output>/spend.sqlite`), so it
survives `--resume` and every process of a multi-process run on one machine shares it. Money
moves in three calls, each one transaction (`BEGIN IMMEDIATE`: concurrent processes queue on
SQLite's write lock, so two of them can never both see the same headroom):

- `reserve(worst_case_usd) -> id` before a request: refused with `BudgetExceededError` when
  spent + reserved-in-flight + worst case would pass the cap, so the overshoot is at most 0
  whenever the worst case really bounds the bill;
- `settle(id, actual_usd, samples)` after it: the reservation becomes the real cost;
- `release(id)` when the request failed before anything was billed.

A reservation left open by a process that died (kill -9 mid-request) may have been billed, so
it is never released: when another process opens the ledger and finds its owner gone (same
host, pid no longer running or reused by another process), it is marked `lost` and counted at
its worst case. `spent` therefore never under-states what the run may have paid.

`spent` (dollars) and `samples` (samples bought) are the run's totals across every resume and
rank; `metrics.jsonl`'s `teacher_cost_usd_total` reads `spent`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from omniopd.errors import BudgetExceededError, CacheError

log = logging.getLogger("omniopd")

LEDGER_FILE = "spend.sqlite"
_EPS = 1e-12  # float slack: a request whose worst case lands exactly on the cap may run

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS reservations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL,
        created REAL NOT NULL,
        worst_usd REAL NOT NULL,
        actual_usd REAL,
        samples INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('open', 'settled', 'released', 'lost')),
        what TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS reservations_open ON reservations (state) WHERE state = 'open'",
    # running totals, updated in the same transaction as the row they summarise
    "CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value REAL NOT NULL)",
    "INSERT OR IGNORE INTO totals VALUES ('spent_usd', 0), ('open_usd', 0), ('samples', 0)",
)


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_token(pid: int | None = None) -> str:
    """`host:pid:start` — names one process, even after its pid is reused."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_alive(owner: str) -> bool:
    """Whether the process an owner token names still runs (owners on other hosts: assumed alive)."""
    host, _, rest = owner.partition(":")
    pid_s, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_s.isdigit():
        return True
    pid = int(pid_s)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return not start or _start_ticks(pid) in ("", start)


class SpendLedger:
    """See the module docstring. `cap_usd=None` records spend without a cap."""

    def __init__(self, path: str | Path, cap_usd: float | None = None, *, clock: Callable[[], float] = time.time,
                 owner: str | None = None, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.cap_usd = cap_usd
        self.clock = clock
        self.owner = owner or process_token()
        self._lock = threading.RLock()  # one connection, used from worker threads one at a time
        if self.path.is_dir():
            raise CacheError(f"spend ledger {self.path} is a directory; move it aside (the ledger is a file in the run directory)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                        timeout=busy_timeout_s)
            self.conn.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a commit survives the process being killed (only a power cut can lose the last one)
            self.conn.execute("PRAGMA synchronous = NORMAL")
            with self._transaction():
                for stmt in _SCHEMA:
                    self.conn.execute(stmt)
        except sqlite3.Error as exc:
            raise CacheError(f"spend ledger {self.path} cannot be opened ({exc}); it must be a writable SQLite file "
                             "in the run directory — move a damaged one aside only if you accept losing the run's spend "
                             "record") from exc
        self.recover()

    # --- money ----------------------------------------------------------------------------
    def reserve(self, worst_case_usd: float, what: str = "", *, owner: str | None = None) -> int:
        """Hold `worst_case_usd` for one request; `BudgetExceededError` if the cap cannot cover it.

        `owner` (default: this process) names who settles it. A provider batch outlives the
        process that submitted it, so `omniopd collect` reserves under `batch:<job>`, an owner no
        process death can make `lost`: the run that resumes polling settles it from the usage.
        """
        worst = max(0.0, float(worst_case_usd))
        with self._transaction() as conn:
            spent, held = self._get(conn, "spent_usd"), self._get(conn, "open_usd")
            if self.cap_usd is not None and spent + held + worst > self.cap_usd + _EPS:
                raise BudgetExceededError(
                    f"teacher spend ${spent:.6f} (+ ${held:.6f} in flight) and this request's worst case "
                    f"${worst:.6f} would pass --max-teacher-usd {self.cap_usd:g}; the run stopped cleanly with a "
                    "checkpoint — raise --max-teacher-usd and rerun with --resume to continue",
                    spent_usd=spent + held, cap_usd=self.cap_usd, needed_usd=worst)
            cur = conn.execute("INSERT INTO reservations (owner, created, worst_usd, state, what) VALUES (?, ?, ?, 'open', ?)",
                               (owner or self.owner, self.clock(), worst, what[:200]))
            self._add(conn, "open_usd", worst)
            return int(cur.lastrowid)

    def settle(self, rid: int, actual_usd: float, samples: int = 0) -> None:
        """Turn reservation `rid` into its real cost (and count the samples it bought)."""
        actual = max(0.0, float(actual_usd))
        with self._transaction() as conn:
            worst = self._open_worst(conn, rid)
            if worst is None:
                return
            if actual > worst + _EPS:
                log.warning("spend ledger: a request cost $%.6f, over its worst-case estimate $%.6f (a bug in the "
                            "estimate; the cap may be crossed by the difference)", actual, worst)
            conn.execute("UPDATE reservations SET state = 'settled', actual_usd = ?, samples = ? WHERE id = ?",
                         (actual, int(samples), rid))
            self._add(conn, "open_usd", -worst)
            self._add(conn, "spent_usd", actual)
            self._add(conn, "samples", int(samples))

    def release(self, rid: int) -> None:
        """Give reservation `rid` back: the request billed nothing."""
        with self._transaction() as conn:
            worst = self._open_worst(conn, rid)
            if worst is None:
                return
            conn.execute("UPDATE reservations SET state = 'released', actual_usd = 0 WHERE id = ?", (rid,))
            self._add(conn, "open_usd", -worst)

    def open_reservations(self, owner_prefix: str) -> dict[int, str]:
        """Open reservations whose owner starts with `owner_prefix` (id -> owner)."""
        with self._lock:
            rows = self.conn.execute("SELECT id, owner FROM reservations WHERE state = 'open' AND substr(owner, 1, ?) = ?",
                                     (len(owner_prefix), owner_prefix)).fetchall()
        return {int(rid): owner for rid, owner in rows}

    def recover(self) -> int:
        """Count open reservations of dead processes at their worst case (`lost`); returns how many."""
        with self._lock:
            rows = self.conn.execute("SELECT id, owner FROM reservations WHERE state = 'open'").fetchall()
        dead = [rid for rid, owner in rows if owner != self.owner and not owner_alive(owner)]
        if not dead:
            return 0
        with self._transaction() as conn:
            for rid in dead:
                worst = self._open_worst(conn, rid)
                if worst is None:
                    continue
                conn.execute("UPDATE reservations SET state = 'lost', actual_usd = worst_usd WHERE id = ?", (rid,))
                self._add(conn, "open_usd", -worst)
                self._add(conn, "spent_usd", worst)
        log.warning("spend ledger: %d requests of a process that died were in flight; counted at their worst case", len(dead))
        return len(dead)

    # --- totals -----------------------------------------------------------------------------
    @property
    def spent(self) -> float:
        """Dollars spent by the run (settled + lost), across resumes and processes."""
        return self._read("spent_usd")

    def total(self) -> float:
        return self.spent

    @property
    def in_flight(self) -> float:
        return self._read("open_usd")

    @property
    def samples(self) -> int:
        """Teacher samples bought (cache hits are free and not counted)."""
        return int(self._read("samples"))

    def headroom(self) -> float | None:
        return None if self.cap_usd is None else self.cap_usd - self.spent - self.in_flight

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()

    def __enter__(self) -> "SpendLedger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, name: str) -> float:
        with self._lock:
            return float(self.conn.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()[0])

    @staticmethod
    def _get(conn: sqlite3.Connection, name: str) -> float:
        return float(conn.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()[0])

    @staticmethod
    def _add(conn: sqlite3.Connection, name: str, delta: float) -> None:
        conn.execute("UPDATE totals SET value = max(0, value + ?) WHERE name = ?", (delta, name))

    @staticmethod
    def _open_worst(conn: sqlite3.Connection, rid: int) -> float | None:
        row = conn.execute("SELECT worst_usd FROM reservations WHERE id = ? AND state = 'open'", (rid,)).fetchone()
        return None if row is None else float(row[0])
