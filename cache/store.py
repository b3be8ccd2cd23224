"""The teacher-sample store: one SQLite file (WAL), content-addressed pools of samples.

Contract:
- A pool is every sample stored under one 16-byte key (see `cache.teacher.request_key`);
  `get_many(keys)` returns each pool oldest first, so "the first n" of a pool is stable.
- `pools(keys)`/`get_many(keys)` read one packed row per key (`cache.packs`) and return lazy
  `Pool`s: a sample's objects are built only when it is indexed, because building an `Entry` +
  `TeacherSample` per stored row was the whole cost of a lookup, and `CachedTeacher` needs only
  the first n of a pool.
- Every sample has a random 16-byte `uid` that never changes (export/import and copies into
  run files keep it); `TeacherSample.cache_id` is its hex form, and samples read back
  carry `cached=True`.
- Writes are single transactions (`BEGIN IMMEDIATE`, so concurrent writers in other
  processes queue on SQLite's lock instead of failing); a crash loses at most the transaction
  in flight, and the file is never left half-written.
- Nothing is written to a file that fails the checks on open (a directory, an empty file, not
  SQLite, truncated, not an omniopd cache, schema newer than this code): each raises a
  `CacheError` subclass whose message says what to do, and the file is left exactly as it was.
  A new cache is only ever made where no file exists.
- Read-only inspection (`creates_nothing=True`) leaves nothing beside the file.

One `SampleStore` is one connection; use it from one thread at a time (`CachedTeacher` opens
a second one for its writer thread).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cache import packs
from cache.schema import EXPECTED_TABLES, SCHEMA_VERSION, migrate, read_version
from cache.sqlite_file import OPEN, OPEN_LOCK, check_header, translate_error
from omniopd.errors import CacheCorruptError, CacheError, CacheReadOnlyError, CacheSchemaError
from providers.base import TeacherSample

OpenMode = Literal["read-write", "read-only"]
KEY_BYTES = 16
_BATCH = 500  # bound parameters per statement
# TeacherSample's positional order, so rows become samples without keyword plumbing
_SAMPLE_COLUMNS = "text, finish_reason, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, origin, latency_s, exact, extra"
_COLUMNS = "key, uid, created, " + _SAMPLE_COLUMNS
_POOL_ORDER = "ORDER BY key, created, uid"


@dataclass(frozen=True)
class Entry:
    """One stored sample with its address: the pool `key`, its `uid`, and when it was stored."""

    key: bytes
    uid: bytes
    created: float
    sample: TeacherSample


class Pool(Sequence[Entry]):
    """One key's stored samples, oldest first, read from its pack; an `Entry` is built on first access.

    `len()` needs no decoding; indexing decodes and builds only the entries asked for, each
    once (indexing twice returns the same object). Compares equal to any
    sequence with equal entries. Decode it while its store is open, or at least after the store
    has seen every origin (teacher, model) in it (a store learns the origins it writes and those
    stored when it opened).
    """

    __slots__ = ("key", "_store", "_n", "_data", "_entries")

    def __init__(self, store: "SampleStore", key: bytes, n: int, data: bytes) -> None:
        self.key, self._store, self._n, self._data = key, store, n, data
        self._entries: list[Entry | None] | None = None

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._entry(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("pool index out of range")
        return self._entry(i)

    def __iter__(self) -> Iterator[Entry]:
        return map(self._entry, range(self._n))

    def _entry(self, i: int) -> Entry:
        if self._entries is None:
            if packs.size(self._data) != self._n:
                raise CacheCorruptError(f"cache {self._store.path}: the packed pool {self.key.hex()} is damaged; run `omniopd cache verify`")
            self._entries = [None] * self._n
        entry = self._entries[i]
        if entry is None:
            uid, created, *row = packs.row(self._data, i)
            entry = self._entries[i] = Entry(self.key, uid, created, self._store._sample(uid.hex(), row))
        return entry

    def samples(self) -> "SamplePool":
        return SamplePool(self)

    def __eq__(self, other: object) -> bool:
        return _seq_eq(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Pool(key={self.key.hex()}, n={self._n})"


class SamplePool(Sequence[TeacherSample]):
    """A `Pool` seen as its `TeacherSample`s (what `get_many` returns); as lazy as the pool."""

    __slots__ = ("pool",)

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [e.sample for e in self.pool[i]]
        return self.pool[i].sample

    def __iter__(self) -> Iterator[TeacherSample]:
        return (e.sample for e in self.pool)

    def __eq__(self, other: object) -> bool:
        return _seq_eq(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SamplePool({list(self)!r})"


def _seq_eq(a: Sequence, b: object) -> bool:
    if not isinstance(b, Sequence) or isinstance(b, (str, bytes)):
        return NotImplemented  # type: ignore[return-value]
    return len(a) == len(b) and list(a) == list(b)


class SampleStore:
    """A connection to one cache file. See the module docstring for the contract."""

    def __init__(
        self,
        path: str | Path,
        mode: OpenMode = "read-write",
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = 60.0,
        max_pages: int | None = None,
        creates_nothing: bool = False,
    ) -> None:
        """`creates_nothing` (read-only inspection: `cache stats`, `verify`, `export`): open the
        file so that nothing appears beside it — no `-wal`, no `-shm` (see `_connect`)."""
        if mode not in ("read-write", "read-only"):
            raise CacheError(f"cache mode must be read-write or read-only; got {mode!r}")
        self.path = Path(path).expanduser()
        self.mode = mode
        self.clock = clock
        self.busy_timeout_s = busy_timeout_s
        self.creates_nothing = creates_nothing and mode == "read-only"
        self._origins: dict[int, tuple[str, str]] = {}
        self._origin_ids: dict[tuple[str, str], int] = {}
        self.conn = self._open(max_pages)

    # --- opening ---------------------------------------------------------------------------
    def _open(self, max_pages: int | None) -> sqlite3.Connection:
        path = self.path
        if path.is_dir():
            raise CacheError(f"cache {path} is a directory, not a cache file; pass a file path, e.g. "
                             f"--cache {path / 'samples.sqlite'}")
        if path.is_file() and path.stat().st_size == 0:
            raise CacheCorruptError(
                f"cache {path} is an empty file (0 bytes), not an omniopd cache; it was not modified. Delete it to "
                f"start a new cache at that path, or pass another --cache.")
        if self.mode == "read-only":
            if not path.is_file():
                raise CacheError(f"cache {path} does not exist; --cache-mode read-only needs an existing cache (or use read-write).")
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CacheReadOnlyError(
                    f"cannot create the cache directory {path.parent} ({exc.strerror}); pass --cache PATH somewhere writable or --cache-mode off."
                ) from exc
            if (path.exists() and not os.access(path, os.W_OK)) or not os.access(path.parent, os.W_OK):
                raise CacheReadOnlyError(
                    f"cache {path} is not writable (the file or its directory is read-only); use --cache-mode read-only "
                    f"to only read it, or --cache PATH somewhere writable."
                )
        if self.mode == "read-write" and not path.exists():
            _create(path)
        self._key = str(path.resolve())
        with OPEN_LOCK:
            if path.exists() and not OPEN.get(self._key):
                check_header(path)
            conn = self._connect(path)
            OPEN[self._key] = OPEN.get(self._key, 0) + 1
        self._closed = False
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            version = read_version(conn)
            if version is None:
                raise CacheCorruptError(f"{path} is an SQLite file but not an omniopd cache; it was not modified. Pass another --cache.")
            if version > SCHEMA_VERSION:
                raise CacheSchemaError(
                    f"cache {path} has schema version {version}, written by a newer omniopd (this one reads up to "
                    f"{SCHEMA_VERSION}); it was not modified. Upgrade omniopd (pip install -U omniopd) or pass another --cache."
                )
            if self.mode == "read-write":
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                if max_pages:
                    conn.execute(f"PRAGMA max_page_count = {int(max_pages)}")
                if version < SCHEMA_VERSION:
                    with self._transaction(conn, "migrating the schema"):
                        current = read_version(conn) or 0  # another process may have migrated meanwhile
                        if current < SCHEMA_VERSION:
                            migrate(conn, current)
            elif version < SCHEMA_VERSION:
                raise CacheSchemaError(
                    f"cache {path} has the older schema version {version}; migrate it first with "
                    f"`omniopd cache migrate {path}` (or open it once with --cache-mode read-write)."
                )
            self._load_origins(conn)
        except sqlite3.Error as exc:
            self._release(conn)
            raise translate_error(exc, path, "opening it") from exc
        except CacheError:
            self._release(conn)
            raise
        return conn

    def _release(self, conn: sqlite3.Connection) -> None:
        with OPEN_LOCK:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            OPEN[self._key] -= 1
            if not OPEN[self._key]:
                del OPEN[self._key]

    def _connect(self, path: Path) -> sqlite3.Connection:
        uri = path.absolute().as_uri()
        try:
            if self.mode == "read-write":
                return sqlite3.connect(f"{uri}?mode=rwc", uri=True, isolation_level=None, check_same_thread=False)
            wal = Path(f"{path}-wal")
            if self.creates_nothing and (not wal.exists() or wal.stat().st_size == 0):
                # No write-ahead log to read: the main file is the whole database, and opening it
                # immutable creates no -wal/-shm (plain mode=ro on a WAL file creates both). A
                # writer that starts during this read is not seen: fine for a one-shot inspection.
                return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                return conn
            except sqlite3.OperationalError:
                # WAL file in a read-only directory without its -shm: read it as immutable.
                conn.close()
                return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise translate_error(exc, path, "opening it") from exc

    @contextlib.contextmanager
    def _transaction(self, conn: sqlite3.Connection | None = None, doing: str = "writing") -> Iterator[sqlite3.Connection]:
        conn = conn or self.conn
        if self.mode != "read-write":
            raise CacheReadOnlyError(f"cache {self.path} is open read-only; {doing} needs --cache-mode read-write.")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path, doing) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._origins.clear()
            self._origin_ids.clear()
            if isinstance(exc, sqlite3.Error):
                raise translate_error(exc, self.path, doing) from exc
            raise

    def _read(self, sql: str, params: Sequence[Any] = (), doing: str = "reading") -> list[tuple]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path, doing) from exc

    def close(self) -> None:
        self._release(self.conn)

    def __enter__(self) -> "SampleStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- origins (interned teacher/model names) ---------------------------------------------
    def _load_origins(self, conn: sqlite3.Connection) -> None:
        for oid, teacher, model in conn.execute("SELECT id, teacher, model FROM origins"):
            self._origins[oid] = (teacher, model)
            self._origin_ids[(teacher, model)] = oid

    def _origin(self, oid: int) -> tuple[str, str]:
        if oid not in self._origins:
            try:
                self._load_origins(self.conn)
            except sqlite3.ProgrammingError as exc:  # closed
                raise CacheError(f"cache {self.path} was closed before its samples were read; read a pool while its store is open") from exc
        return self._origins.get(oid, ("", ""))

    def _origin_id(self, conn: sqlite3.Connection, teacher: str, model: str) -> int:
        oid = self._origin_ids.get((teacher, model))
        if oid is None:
            conn.execute("INSERT OR IGNORE INTO origins (teacher, model) VALUES (?, ?)", (teacher, model))
            oid = conn.execute("SELECT id FROM origins WHERE teacher = ? AND model = ?", (teacher, model)).fetchone()[0]
            self._origin_ids[(teacher, model)] = oid
            self._origins[oid] = (teacher, model)
        return oid

    # --- samples ------------------------------------------------------------------------------
    def _sample(self, cache_id: str, row: Sequence) -> TeacherSample:
        """`row` in `_SAMPLE_COLUMNS` order -> a TeacherSample with its `cache_id` (the uid in hex)."""
        text, finish, tin, tout, cr, cw, cost, origin, latency, exact, extra = row
        teacher, model = self._origins.get(origin) or self._origin(origin)
        extra_d = json.loads(extra) if extra else {}
        # stored = already paid for; `cached` and `cache_id` are set on the way out, never stored
        return TeacherSample(text, finish, tin, tout, cr, cw, cost, model, teacher, latency, exact == 1, extra_d,
                             cached=True, cache_id=cache_id)

    def _row_to_entry(self, row: tuple) -> Entry:
        return Entry(row[0], row[1], row[2], self._sample(row[1].hex(), row[3:]))

    def pools(self, keys: Sequence[bytes]) -> dict[bytes, Pool]:
        """Each key's pool as lazy entries, oldest first (keys with no samples are absent).

        One query per 500 keys, one packed row per key; see `Pool` for what is decoded when.
        """
        out: dict[bytes, Pool] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), _BATCH):
            part = unique[i : i + _BATCH]
            rows = self._read(f"SELECT key, n, data FROM pools WHERE key IN ({','.join('?' * len(part))})", part, "looking samples up")
            for key, n, data in rows:
                out[key] = Pool(self, key, n, data)
        return out

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, SamplePool]:
        """Each key's pool of samples, oldest first (keys with no samples are absent); lazy like `pools`."""
        return {k: SamplePool(pool) for k, pool in self.pools(keys).items()}

    def by_uid(self, uids: Sequence[bytes]) -> dict[bytes, Entry]:
        """Stored entries by uid (missing uids are absent)."""
        out: dict[bytes, Entry] = {}
        unique = list(dict.fromkeys(uids))
        for i in range(0, len(unique), _BATCH):
            part = unique[i : i + _BATCH]
            for row in self._read(f"SELECT {_COLUMNS} FROM samples WHERE uid IN ({','.join('?' * len(part))})", part):
                entry = self._row_to_entry(row)
                out[entry.uid] = entry
        return out

    def _insert(self, conn: sqlite3.Connection, entries: Sequence[Entry]) -> int:
        rows = []
        for e in entries:
            if len(e.key) != KEY_BYTES or len(e.uid) != KEY_BYTES:
                raise CacheError(f"sample keys and ids must be {KEY_BYTES} bytes (got {len(e.key)}, {len(e.uid)}); this is a bug")
            s = e.sample
            rows.append(
                (e.key, e.uid, float(e.created), s.text, s.finish_reason, float(s.input_tokens), float(s.output_tokens),
                 float(s.cache_read_tokens), float(s.cache_write_tokens), float(s.cost_usd), self._origin_id(conn, s.teacher, s.model),
                 float(s.latency_s), int(bool(s.exact)), json.dumps(s.extra, sort_keys=True, default=str) if s.extra else None)
            )
        before = conn.total_changes
        conn.executemany(f"INSERT OR IGNORE INTO samples ({_COLUMNS}) VALUES ({','.join('?' * 14)})", rows)
        added = conn.total_changes - before
        if added:
            packs.rebuild(conn, [r[0] for r in rows])
        return added

    def put_many(self, entries: Sequence[Entry], *, release: Sequence[tuple[bytes, str]] = ()) -> int:
        """Store entries in one transaction; entries whose uid is already stored are skipped. Returns rows added.

        `release` lists (key, holder) leases to drop in the same transaction: the samples a
        holder bought become visible at the instant its claim ends, so a waiting process never
        sees the key free and the pool still short.
        """
        if not entries and not release:
            return 0
        with self._transaction(doing=f"storing {len(entries)} samples") as conn:
            added = self._insert(conn, entries) if entries else 0
            if release:
                conn.executemany("DELETE FROM leases WHERE key = ? AND holder = ?", list(release))
            return added

    # --- leases: who is buying a key's samples right now -----------------------------------
    def claim(self, keys: Sequence[bytes], holder: str, ttl_s: float) -> dict[bytes, float | None]:
        """Claim each key for `holder` for `ttl_s` seconds, in one transaction.

        Returns, per key, None when `holder` now holds it (it was free, expired, or already
        its own), else the epoch time the other holder's lease runs out.
        """
        now = self.clock()
        out: dict[bytes, float | None] = {}
        with self._transaction(doing="claiming keys") as conn:
            for key in keys:
                row = conn.execute("SELECT holder, expires FROM leases WHERE key = ?", (key,)).fetchone()
                if row is not None and row[0] != holder and row[1] > now:
                    out[key] = float(row[1])
                    continue
                conn.execute("INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                             "holder = excluded.holder, expires = excluded.expires", (key, holder, now + ttl_s))
                out[key] = None
        return out

    def renew(self, keys: Sequence[bytes], holder: str, ttl_s: float) -> None:
        """Extend `holder`'s leases on `keys` (a holder still waiting on its teacher)."""
        expires = self.clock() + ttl_s
        with self._transaction(doing="renewing leases") as conn:
            conn.executemany("UPDATE leases SET expires = ? WHERE key = ? AND holder = ?",
                             [(expires, k, holder) for k in keys])

    def release(self, keys: Sequence[bytes], holder: str) -> None:
        """Drop `holder`'s leases on `keys` (its purchase failed: let others try)."""
        with self._transaction(doing="releasing leases") as conn:
            conn.executemany("DELETE FROM leases WHERE key = ? AND holder = ?", [(k, holder) for k in keys])

    def delete(self, *, before: float | None = None, model: str | None = None, teacher: str | None = None, dry_run: bool = False) -> int:
        """Delete samples stored before `before` (epoch seconds) and/or from a model/teacher; returns how many."""
        where, params = [], []
        if before is not None:
            where.append("created < ?")
            params.append(before)
        if model is not None or teacher is not None:
            sub, sub_params = [], []
            if model is not None:
                sub.append("model = ?")
                sub_params.append(model)
            if teacher is not None:
                sub.append("teacher = ?")
                sub_params.append(teacher)
            where.append(f"origin IN (SELECT id FROM origins WHERE {' AND '.join(sub)})")
            params.extend(sub_params)
        if not where:
            raise CacheError("prune needs at least one of --older-than, --model, --teacher (refusing to delete everything)")
        cond = " AND ".join(where)
        if dry_run:
            return self._read(f"SELECT COUNT(*) FROM samples WHERE {cond}", params)[0][0]
        with self._transaction(doing="pruning samples") as conn:
            keys = [r[0] for r in conn.execute(f"SELECT DISTINCT key FROM samples WHERE {cond}", params)]
            deleted = conn.execute(f"DELETE FROM samples WHERE {cond}", params).rowcount
            packs.rebuild(conn, keys)
            return deleted

    def vacuum(self) -> None:
        try:
            self.conn.execute("VACUUM")
        except sqlite3.Error as exc:
            raise translate_error(exc, self.path, "compacting it") from exc

    def iter_entries(self, batch: int = 2000) -> Iterator[Entry]:
        """Every stored sample, pool by pool (for export); pages by primary key, so memory stays flat."""
        last: tuple = (b"", 0.0, b"")
        while True:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM samples WHERE (key, created, uid) > (?, ?, ?) {_POOL_ORDER} LIMIT ?",
                (*last, batch), "exporting")
            if not rows:
                return
            for row in rows:
                yield self._row_to_entry(row)
            last = rows[-1][:3]

    # --- usage counters ---------------------------------------------------------------------
    def record_lookups(self, session: str, started: float, requested: int, from_cache: int, from_teacher: int, misses: int) -> None:
        """Upsert one process session's counters (for the hit rate in `cache stats`)."""
        with self._transaction(doing="recording lookup counts") as conn:
            conn.execute(
                "INSERT INTO lookups VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (session) DO UPDATE SET "
                "requested = excluded.requested, from_cache = excluded.from_cache, "
                "from_teacher = excluded.from_teacher, misses = excluded.misses",
                (session, started, requested, from_cache, from_teacher, misses),
            )

    # --- runs and episodes --------------------------------------------------------------------
    def put_run(self, run: str, meta: dict[str, Any]) -> None:
        with self._transaction(doing="recording the run") as conn:
            conn.execute(
                "INSERT INTO runs VALUES (?, ?, ?) ON CONFLICT (run) DO UPDATE SET meta = excluded.meta",
                (run, self.clock(), json.dumps(meta, sort_keys=True, default=str)),
            )

    def put_episode(self, run: str, step: int, data: bytes, samples: Sequence[Entry] = (), rank: int = 0) -> None:
        """Store one process's episode of a step and the samples it used, in one transaction (replaces it)."""
        with self._transaction(doing=f"recording step {step}") as conn:
            self._insert(conn, samples)
            conn.execute(
                "INSERT OR REPLACE INTO episodes (run, step, rank, created, data) VALUES (?, ?, ?, ?, ?)",
                (run, int(step), int(rank), self.clock(), sqlite3.Binary(data)),
            )

    def runs(self) -> list[tuple[str, float, dict[str, Any]]]:
        return [(r, c, json.loads(m)) for r, c, m in self._read("SELECT run, created, meta FROM runs ORDER BY created")]

    def episode_steps(self, run: str) -> list[int]:
        return [r[0] for r in self._read("SELECT DISTINCT step FROM episodes WHERE run = ? ORDER BY step", (run,),
                                         "reading episodes")]

    def episode_entries(self, run: str) -> list[tuple[int, int]]:
        """(step, rank) of every recorded episode of `run`, in step then rank order."""
        return [(s, r) for s, r in self._read("SELECT step, rank FROM episodes WHERE run = ? ORDER BY step, rank", (run,),
                                              "reading episodes")]

    def episode_blob(self, run: str, step: int, rank: int = 0) -> bytes | None:
        rows = self._read("SELECT data FROM episodes WHERE run = ? AND step = ? AND rank = ?", (run, int(step), int(rank)),
                          "reading an episode")
        return bytes(rows[0][0]) if rows else None

    def episode_blobs(self, run: str) -> Iterator[tuple[int, bytes]]:
        for step, data in self._read("SELECT step, data FROM episodes WHERE run = ? ORDER BY step, rank", (run,),
                                     "reading episodes"):
            yield step, bytes(data)

    # --- inspection ------------------------------------------------------------------------
    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def stats(self) -> dict[str, Any]:
        """Counts, size, recorded spend and hit rate."""
        n, keys, cost, tin, tout, oldest, newest = self._read(
            "SELECT COUNT(*), COUNT(DISTINCT key), TOTAL(cost_usd), TOTAL(input_tokens), TOTAL(output_tokens), "
            "MIN(created), MAX(created) FROM samples"
        )[0]
        by_origin = [
            {"teacher": t, "model": m, "samples": c, "cost_usd": usd, "approximate": approx}
            for t, m, c, usd, approx in self._read(
                "SELECT o.teacher, o.model, COUNT(*), TOTAL(s.cost_usd), TOTAL(1 - s.exact) FROM samples s "
                "JOIN origins o ON o.id = s.origin GROUP BY s.origin ORDER BY COUNT(*) DESC"
            )
        ]
        req, hit, fetched, miss = self._read("SELECT TOTAL(requested), TOTAL(from_cache), TOTAL(from_teacher), TOTAL(misses) FROM lookups")[0]
        size = self.file_bytes()
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "samples": n,
            "keys": keys,
            "file_bytes": size,
            "bytes_per_sample": size / n if n else None,
            "cost_usd": cost,
            "input_tokens": tin,
            "output_tokens": tout,
            "oldest": oldest,
            "newest": newest,
            "by_origin": by_origin,
            "requested": int(req),
            "from_cache": int(hit),
            "from_teacher": int(fetched),
            "misses": int(miss),
            "hit_rate": hit / req if req else None,
            "runs": self._read("SELECT COUNT(*) FROM runs")[0][0],
            "episodes": self._read("SELECT COUNT(*) FROM episodes")[0][0],
        }

    def verify(self) -> list[str]:
        """Problems found (empty = healthy): SQLite's integrity check, foreign keys, schema, key sizes."""
        problems = [r[0] for r in self._read("PRAGMA integrity_check", doing="checking integrity") if r[0] != "ok"]
        problems += [f"foreign key: {r}" for r in self._read("PRAGMA foreign_key_check", doing="checking references")]
        tables = {r[0] for r in self._read("SELECT name FROM sqlite_master WHERE type = 'table'")}
        problems += [f"missing table {t}" for t in EXPECTED_TABLES if t not in tables]
        if not problems:
            bad = self._read(f"SELECT COUNT(*) FROM samples WHERE length(key) != {KEY_BYTES} OR length(uid) != {KEY_BYTES}")[0][0]
            if bad:
                problems.append(f"{bad} samples with malformed key or id")
            problems += packs.check(self.conn)
        return problems


def _create(path: Path) -> None:
    """Make a new, empty cache at `path` atomically: build it beside, then hard-link it in.

    So no process ever sees a half-made cache at `path` — in particular never a 0-byte file,
    which is refused as not a cache (it is what a user's stray `touch` leaves). When another
    process links its own first, theirs is used.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    try:
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            migrate(conn, 0)
            conn.execute("COMMIT")
        finally:
            conn.close()  # the last connection checkpoints the log: `tmp` is the whole database
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(tmp, path)
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "creating it") from exc
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def verify_file(path: str | Path) -> list[str]:
    """Problems with the cache file at `path` (empty = healthy), even when it cannot be opened."""
    try:
        with SampleStore(path, "read-only", creates_nothing=True) as store:
            return store.verify()
    except (CacheCorruptError, CacheSchemaError) as exc:
        problems = [str(exc)]
    try:  # what SQLite itself can still say about the file, read as immutable (nothing written)
        conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            problems += [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        problems.append(f"SQLite cannot read it: {exc}")
    return problems
