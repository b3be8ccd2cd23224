"""Export and import samples as JSON Lines, to move what was bought between machines.

One header line (`{"omniopd_cache_export": 1, ...}`) then one sample per line with its pool
`key` and `id` (hex), its timestamp and every `TeacherSample` field. Import adds samples whose
id the target does not hold yet (so importing twice, or importing a file made from this
cache, adds nothing) in batched transactions; a malformed line stops the import with its line
number, after the lines before it were committed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from cache.store import KEY_BYTES, Entry, SampleStore
from cache.schema import SCHEMA_VERSION
from omniopd.errors import DataError
from providers.base import TeacherSample

FORMAT_VERSION = 1
_FIELDS = [f.name for f in dataclasses.fields(TeacherSample) if f.name not in ("cache_id", "cached")]


def entry_to_json(entry: Entry) -> dict[str, Any]:
    sample = dataclasses.asdict(entry.sample)
    sample.pop("cache_id"), sample.pop("cached")  # set on the way out of a cache, never stored
    return {"key": entry.key.hex(), "id": entry.uid.hex(), "created": entry.created, **sample}


def entry_from_json(obj: Any, where: str) -> Entry:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object per line")
    try:
        key, uid = bytes.fromhex(obj["key"]), bytes.fromhex(obj["id"])
        created = float(obj["created"])
        fields = {f: obj[f] for f in _FIELDS if f in obj}
        if not isinstance(fields.get("text"), str):
            raise ValueError("'text' must be a string")
        if not isinstance(fields.get("extra", {}), dict):
            raise ValueError("'extra' must be an object")
        sample = TeacherSample(**fields)
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{where}: not an omniopd cache sample ({exc}); lines come from `omniopd cache export`") from exc
    if len(key) != KEY_BYTES or len(uid) != KEY_BYTES:
        raise DataError(f"{where}: 'key' and 'id' must be {KEY_BYTES * 2} hex digits")
    return Entry(key, uid, created, sample)


def export_jsonl(store: SampleStore, out: IO[str], entries: Iterable[Entry] | None = None) -> int:
    """Write a header and every sample (or `entries`); returns the number of samples written."""
    out.write(json.dumps({"omniopd_cache_export": FORMAT_VERSION, "schema_version": SCHEMA_VERSION}) + "\n")
    n = 0
    for entry in store.iter_entries() if entries is None else entries:
        out.write(json.dumps(entry_to_json(entry), ensure_ascii=False) + "\n")
        n += 1
    return n


def _read_entries(lines: Iterable[str], name: str) -> Iterator[Entry]:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}:{lineno}: not valid JSON ({exc.msg})") from exc
        if lineno == 1 and isinstance(obj, dict) and "omniopd_cache_export" in obj:
            if obj["omniopd_cache_export"] != FORMAT_VERSION:
                raise DataError(f"{name}: export format {obj['omniopd_cache_export']} is not supported (this omniopd reads {FORMAT_VERSION}); upgrade omniopd")
            continue
        yield entry_from_json(obj, f"{name}:{lineno}")


def import_jsonl(store: SampleStore, lines: Iterable[str], name: str = "<input>", batch: int = 2000) -> tuple[int, int]:
    """Add the samples in `lines`; returns (added, already present)."""
    added = seen = 0
    buf: list[Entry] = []
    try:
        for entry in _read_entries(lines, name):
            buf.append(entry)
            if len(buf) >= batch:
                added += store.put_many(buf)
                seen += len(buf)
                buf = []
    finally:  # a bad line still keeps the good lines before it
        if buf:
            added += store.put_many(buf)
            seen += len(buf)
    return added, seen - added
