"""Opening SQLite files safely: error translation, header checks, and the POSIX lock trap.

`translate_error` maps sqlite3 errors to the `CacheError` a user can act on. `check_header`
rejects non-SQLite and truncated files before SQLite touches them. `OPEN`/`OPEN_LOCK` count
this process's connections per file, because POSIX drops *all* of a process's locks on a file
when *any* descriptor of it is closed: reading the header of a file SQLite already holds open
would silently release SQLite's locks and let another process delete the WAL under it (this
lost committed samples in the two-writer test before it was guarded).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from omniopd.errors import CacheCorruptError, CacheError, CacheFullError, CacheReadOnlyError

_SQLITE_MAGIC = b"SQLite format 3\x00"

def translate_error(exc: sqlite3.Error, path: Path | str, doing: str) -> CacheError:
    """Map a sqlite3 error to the `CacheError` a user can act on."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    msg = str(exc)
    if name.startswith("SQLITE_CORRUPT") or name == "SQLITE_NOTADB" or "malformed" in msg or "not a database" in msg:
        return CacheCorruptError(
            f"cache {path} is damaged ({msg}) while {doing}; it was not modified. Check it with "
            f"`omniopd cache verify {path}`, then move it aside or pass another --cache to start fresh "
            f"(`omniopd cache export` saves whatever is still readable)."
        )
    if name.startswith("SQLITE_READONLY") or name.startswith("SQLITE_CANTOPEN") or "readonly" in msg:
        return CacheReadOnlyError(
            f"cache {path} cannot be written ({msg}) while {doing}. Use --cache-mode read-only to only "
            f"read it, or --cache PATH to put the cache somewhere writable."
        )
    if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR") or "disk is full" in msg:
        return CacheFullError(
            f"cache {path}: the write failed ({msg}) while {doing} — the disk is full or the file cannot "
            f"grow. The transaction was rolled back and stored samples are intact; free space, pass "
            f"--cache PATH on another disk, or `omniopd cache prune` old samples."
        )
    if name.startswith("SQLITE_BUSY") or "locked" in msg:
        return CacheError(
            f"cache {path} stayed locked by another process while {doing} ({msg}); retry, or give this "
            f"run its own --cache."
        )
    return CacheError(f"cache {path}: {msg} while {doing}")


# resolved path -> connections this process holds to it (see the module docstring)
OPEN: dict[str, int] = {}
OPEN_LOCK = threading.Lock()


def check_header(path: Path) -> None:
    """Reject files that are not SQLite or are shorter than their header says (truncated).

    Never call it on a file this process has open through SQLite (see `OPEN`).
    """
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or not head.startswith(_SQLITE_MAGIC):
        raise CacheCorruptError(
            f"cache {path} is not an SQLite database (wrong header); it was not modified. Pass another "
            f"--cache, or move this file aside."
        )
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    # The in-header page count is valid when the change counter matches version-valid-for.
    if head[24:28] == head[92:96] and pages and size < pages * page_size:
        raise CacheCorruptError(
            f"cache {path} is truncated ({size} bytes, its header says {pages * page_size}); it was not "
            f"modified. Restore it from a copy, `omniopd cache export` what is readable, or move it aside."
        )
