"""The cache file's schema: one version number, and the migrations that reach it.

`MIGRATIONS[v]` takes a file at version v-1 to version v; a new file runs them all. A file
whose version is ahead of `SCHEMA_VERSION` was written by a newer omniopd and is never
touched (reading it could misinterpret columns; writing it could corrupt them). Migrations
run inside the caller's write transaction, so a crash mid-migration leaves the old version.

Layout (why it looks like this):
- `samples` holds one row per teacher continuation, clustered by its primary key
  `(key, created, uid)` (WITHOUT ROWID): `key` is the 16-byte content address of the request
  (teacher identity + request fingerprint), so a pool is one contiguous range of the table and
  a lookup is one B-tree descent, not one per sample (3x faster at 10^6 samples). `uid` is a
  16-byte id that survives export/import and copies into run files, which is what recorded
  episodes refer to.
- `origins` interns the (teacher, model) strings so a million samples do not repeat them.
- `runs`/`episodes` hold recorded training steps (compact blobs, see `cache.episodes`), one row
  per (run, step, rank) since version 5 (a multi-process run records every process's rollouts).
- `lookups` counts served samples per process session, for the hit rate in `cache stats`.
- `pools` (version 4) holds each pool again, packed in one row: reading 10 rows of 14 columns
  per key capped batched lookups at ~10 000 pools/s; one row per key reaches > 50 000.
  It is derived from `samples` in the same transaction as every write (see `cache.packs`).
- `leases` (version 5): a key some process is buying samples for right now, who (`holder`, a
  session id) and until when (`expires`, epoch seconds; the holder renews it while it waits
  on the teacher, and a crashed holder's lease simply runs out). See `cache.teacher`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from cache import packs

SCHEMA_VERSION = 6

MIGRATIONS: dict[int, tuple[str | Callable[[sqlite3.Connection], None], ...]] = {
    1: (
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE origins (id INTEGER PRIMARY KEY, teacher TEXT NOT NULL, model TEXT NOT NULL, UNIQUE (teacher, model))",
        """CREATE TABLE samples (
            key BLOB NOT NULL,
            created REAL NOT NULL,
            uid BLOB NOT NULL,
            origin INTEGER NOT NULL REFERENCES origins(id),
            text TEXT NOT NULL,
            finish_reason TEXT NOT NULL,
            exact INTEGER NOT NULL,
            input_tokens REAL NOT NULL,
            output_tokens REAL NOT NULL,
            cache_read_tokens REAL NOT NULL,
            cache_write_tokens REAL NOT NULL,
            cost_usd REAL NOT NULL,
            latency_s REAL NOT NULL,
            extra TEXT,
            PRIMARY KEY (key, created, uid)
        ) WITHOUT ROWID""",
        "CREATE UNIQUE INDEX samples_uid ON samples (uid)",
    ),
    2: (
        "CREATE TABLE runs (run TEXT PRIMARY KEY, created REAL NOT NULL, meta TEXT NOT NULL)",
        """CREATE TABLE episodes (
            run TEXT NOT NULL REFERENCES runs(run),
            step INTEGER NOT NULL,
            created REAL NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (run, step)
        )""",
    ),
    3: (
        """CREATE TABLE lookups (
            session TEXT PRIMARY KEY,
            started REAL NOT NULL,
            requested INTEGER NOT NULL,
            from_cache INTEGER NOT NULL,
            from_teacher INTEGER NOT NULL,
            misses INTEGER NOT NULL
        )""",
        "CREATE INDEX samples_created ON samples (created)",
    ),
    # each pool packed in one row, so a batched lookup reads one row per key (see cache.packs)
    4: (packs.CREATE, packs.rebuild_all),
    # episodes keyed by (run, step, rank): every process of a multi-process run records its own
    # rollouts (version 4 kept one row per step, so all ranks but the last writer were lost)
    5: (
        """CREATE TABLE episodes_v5 (
            run TEXT NOT NULL REFERENCES runs(run),
            step INTEGER NOT NULL,
            rank INTEGER NOT NULL,
            created REAL NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (run, step, rank)
        )""",
        "INSERT INTO episodes_v5 (run, step, rank, created, data) SELECT run, step, 0, created, data FROM episodes",
        "DROP TABLE episodes",
        "ALTER TABLE episodes_v5 RENAME TO episodes",
    ),
    # a process buying a key's samples claims it, so others wait instead of buying too
    6: ("CREATE TABLE leases (key BLOB PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",),
}

EXPECTED_TABLES = ("meta", "origins", "samples", "runs", "episodes", "lookups", "pools", "leases")


def read_version(conn: sqlite3.Connection) -> int | None:
    """The file's schema version; 0 for an empty database; None if it is not an omniopd cache."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return 0
    if "meta" not in tables:
        return None
    row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    if row is None:
        if "samples" in tables:  # ours, but the version row is gone: damaged, not foreign
            raise sqlite3.DatabaseError("the schema version record is missing (database disk image is malformed)")
        return None
    try:
        return int(row[0])
    except ValueError:
        return None


def migrate(conn: sqlite3.Connection, current: int, target: int = SCHEMA_VERSION) -> None:
    """Apply migrations current+1..target; the caller holds a write transaction."""
    for version in range(current + 1, target + 1):
        for statement in MIGRATIONS[version]:
            if callable(statement):  # a data migration, run inside the same transaction
                statement(conn)
            else:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('schema_version', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (str(version),),
        )
