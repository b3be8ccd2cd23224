"""Pool packs: each pool's samples stored again, packed in one row, so a lookup reads one row.

Why: a batched lookup of 1000 pools of 10 samples read 10 000 rows of 14 columns from
`samples` and built an `Entry` + `TeacherSample` per row; that capped lookups at ~10 000 pools/s
(SQLite's per-row work and Python's per-column objects, measured in `bench/cache_bench.py`).
Reading one `pools` row per key and decoding only the samples a caller touches (`LazyPool`)
makes a lookup cost one B-tree seek and one small object.

Contract:
- `samples` stays the source of truth (ids, prune, stats, export read it); `pools` is derived
  from it and rewritten in the *same transaction* as every change to `samples`
  (`rebuild(conn, keys)`), so the two never disagree on disk. `SampleStore.verify` checks it.
- A pack is binary, little-endian: `_HEAD` (the format tag and n), then n fixed-size
  `_RECORD`s in pool order (created, uid), then the UTF-8 strings they point into. Any one
  sample decodes on its own with one `unpack_from` and three slices, so a caller that needs the
  first n of a pool pays for n (JSON had to parse the whole pack: ~4 us a sample). Numbers are
  the SQLite REAL/INTEGER values unchanged (doubles stay doubles). Not pickle: a cache file may
  come from another machine and must never execute code when read.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterable, Sequence

# the columns a pack row holds, after the uid (shared with cache.store's sample decoding)
PACK_COLUMNS = ("created, text, finish_reason, input_tokens, output_tokens, cache_read_tokens, "
                "cache_write_tokens, cost_usd, origin, latency_s, exact, extra")
_BATCH = 500  # bound parameters per statement

CREATE = "CREATE TABLE pools (key BLOB PRIMARY KEY, n INTEGER NOT NULL, data BLOB NOT NULL)"


_TAG = b"omniopd-pack-1\0\0"
_HEAD = struct.Struct("<16sI")  # tag, n
# uid, created, input/output/cache-read/cache-write tokens, cost, latency, origin, exact,
# offset of its strings (from the start of the pack), text/finish_reason/extra byte lengths (extra -1 = NULL)
_RECORD = struct.Struct("<16s7dqBIIIi")
_HEAD_SIZE, _RECORD_SIZE = _HEAD.size, _RECORD.size


def encode(rows: Sequence[tuple]) -> bytes:
    """Rows `(uid, created, <PACK_COLUMNS after created>)` in pool order -> one pack."""
    base = _HEAD.size + _RECORD.size * len(rows)
    records, strings, offset = [], [], base
    for uid, created, text, finish, tin, tout, cr, cw, cost, origin, latency, exact, extra in rows:
        t, f, x = text.encode(), finish.encode(), (extra.encode() if extra is not None else b"")
        records.append(_RECORD.pack(uid, created, tin, tout, cr, cw, cost, latency, origin, exact, offset, len(t), len(f),
                                    len(x) if extra is not None else -1))
        strings += (t, f, x)
        offset += len(t) + len(f) + len(x)
    return b"".join((_HEAD.pack(_TAG, len(rows)), *records, *strings))


def size(data: bytes) -> int:
    """How many samples a pack holds."""
    tag, n = _HEAD.unpack_from(data)
    if tag != _TAG:
        raise ValueError("not an omniopd pool pack (unknown format tag)")
    return n


def row(data: bytes, i: int) -> tuple:
    """Sample i of a pack as `(uid, created, <PACK_COLUMNS after created>)`, the order `encode` takes."""
    uid, created, tin, tout, cr, cw, cost, latency, origin, exact, off, nt, nf, nx = _RECORD.unpack_from(data, _HEAD_SIZE + _RECORD_SIZE * i)
    end = off + nt
    fend = end + nf
    return (uid, created, data[off:end].decode(), data[end:fend].decode(), tin, tout, cr, cw, cost, origin, latency, exact,
            data[fend:fend + nx].decode() if nx >= 0 else None)


def rebuild(conn: sqlite3.Connection, keys: Iterable[bytes]) -> None:
    """Rewrite the packs of `keys` from `samples` (drop those whose pool is now empty).

    The caller holds the write transaction that changed `samples`.
    """
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), _BATCH):
        part = unique[i : i + _BATCH]
        marks = ",".join("?" * len(part))
        rows = conn.execute(
            f"SELECT key, uid, {PACK_COLUMNS} FROM samples WHERE key IN ({marks}) ORDER BY key, created, uid", part
        ).fetchall()
        conn.execute(f"DELETE FROM pools WHERE key IN ({marks})", part)
        conn.executemany("INSERT INTO pools (key, n, data) VALUES (?, ?, ?)", _packs(rows))


def rebuild_all(conn: sqlite3.Connection, batch: int = 20_000) -> None:
    """Build every pack from `samples` (the schema-4 migration); pages through the primary key."""
    conn.execute("DELETE FROM pools")
    last: tuple = (b"", float("-inf"), b"")
    while True:
        rows = conn.execute(
            f"SELECT key, uid, {PACK_COLUMNS} FROM samples WHERE (key, created, uid) > (?, ?, ?) "
            "ORDER BY key, created, uid LIMIT ?", (*last, batch)).fetchall()
        if not rows:
            return
        last_key = rows[-1][0]
        if len(rows) == batch:  # the last pool may continue in the next page: take it whole then
            rows = [r for r in rows if r[0] != last_key] or rows
            if rows[-1][0] == last_key:  # one pool longer than a page: read it whole
                rows = conn.execute(
                    f"SELECT key, uid, {PACK_COLUMNS} FROM samples WHERE key = ? ORDER BY created, uid", (last_key,)).fetchall()
        conn.executemany("INSERT INTO pools (key, n, data) VALUES (?, ?, ?)", _packs(rows))
        last = (rows[-1][0], rows[-1][2], rows[-1][1])


def _packs(rows: list[tuple]) -> list[tuple[bytes, int, bytes]]:
    """Rows `(key, uid, ...)` sorted by key -> `(key, n, pack)` per key."""
    out, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i][0] != rows[start][0]:
            group = [(r[1], r[2], *r[3:]) for r in rows[start:i]]
            out.append((rows[start][0], len(group), encode(group)))
            start = i
    return out


def check(conn: sqlite3.Connection) -> list[str]:
    """Problems where `pools` disagrees with `samples` in pool membership or size (empty = consistent)."""
    bad = conn.execute(
        "SELECT COUNT(*) FROM (SELECT key, COUNT(*) AS c FROM samples GROUP BY key) s "
        "LEFT JOIN pools p ON p.key = s.key WHERE p.n IS NULL OR p.n != s.c"
    ).fetchone()[0]
    orphans = conn.execute("SELECT COUNT(*) FROM pools WHERE key NOT IN (SELECT key FROM samples)").fetchone()[0]
    problems = []
    if bad:
        problems.append(f"{bad} pools whose packed copy (table pools) is missing or disagrees with their samples")
    if orphans:
        problems.append(f"{orphans} packed pools with no samples")
    return problems
