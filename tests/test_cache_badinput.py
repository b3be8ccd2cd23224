"""Bad input: damaged, truncated, foreign or newer files, read-only paths, a full disk.

Each gives a `CacheError` subclass whose message says what to do, and leaves the file as it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cache.store import Entry, SampleStore
from omniopd.cli import main as cli_main
from omniopd.errors import CacheCorruptError, CacheReadOnlyError, CacheSchemaError
from providers.base import TeacherSample

ROOT = Path(__file__).resolve().parents[1]


def filled(path: Path, n: int = 300) -> Path:
    with SampleStore(path) as store:
        store.put_many([Entry(i.to_bytes(16, "big"), (10**6 + i).to_bytes(16, "big"), 1.0,
                              TeacherSample(text=f"sample {i} " * 20, model="m")) for i in range(n)])
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(os.urandom(8192))
    before = digest(path)
    for mode in ("read-write", "read-only"):
        with pytest.raises(CacheCorruptError, match="not an SQLite database.*not modified"):
            SampleStore(path, mode)
    assert digest(path) == before and not Path(f"{path}-wal").exists()


def test_a_truncated_file_is_refused_untouched(tmp_path):
    path = filled(tmp_path / "c.sqlite")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = digest(path)
    with pytest.raises(CacheCorruptError, match="truncated"):
        SampleStore(path)
    assert digest(path) == before


def test_damaged_pages_are_reported_by_verify(tmp_path, capsys):
    path = filled(tmp_path / "c.sqlite")
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for p in range(2, len(data) // page):  # scribble over every page but the header page
        data[p * page + 8 : p * page + 64] = os.urandom(56)
    path.write_bytes(bytes(data))
    before = digest(path)
    assert cli_main(["cache", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "problem: cache" in out and "damaged" in out and "start a fresh cache" in out
    with pytest.raises(CacheCorruptError, match="damaged.*omniopd cache verify"):
        SampleStore(path)
    assert digest(path) == before


def test_a_newer_schema_is_refused_untouched(tmp_path):
    path = filled(tmp_path / "c.sqlite")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    conn.commit()
    conn.close()
    before = digest(path)
    for mode in ("read-write", "read-only"):
        with pytest.raises(CacheSchemaError, match="schema version 99, written by a newer omniopd.*Upgrade omniopd"):
            SampleStore(path, mode)
    assert digest(path) == before


def test_a_foreign_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE contacts (name TEXT)")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(CacheCorruptError, match="not an omniopd cache"):
        SampleStore(path)
    assert digest(path) == before


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root ignores them otherwise)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a path read-only for this process")
    caps = "-dac_override,-dac_read_search,-fowner"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


def _child(code: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*kw.pop("prefix", []), sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120, **kw)


def test_a_read_only_path_gives_a_clear_error_and_read_only_mode_still_reads(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    path = filled(d / "c.sqlite", 20)
    before = digest(path)
    path.chmod(0o444)
    d.chmod(0o555)
    try:
        out = _child(f"""
            from cache.store import SampleStore
            from omniopd.errors import CacheReadOnlyError
            try:
                SampleStore({str(path)!r}, "read-write")
            except CacheReadOnlyError as exc:
                print("ERR", exc)
            print("READ", SampleStore({str(path)!r}, "read-only").stats()["samples"])
        """, prefix=_unprivileged())
    finally:
        d.chmod(0o755)
        path.chmod(0o644)
    assert "ERR cache" in out.stdout and "--cache-mode read-only" in out.stdout, out.stderr
    assert "READ 20" in out.stdout, out.stderr
    assert digest(path) == before


def test_an_unwritable_directory_for_a_new_cache(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheReadOnlyError, match="cannot create the cache directory"):
        SampleStore(blocker / "sub" / "c.sqlite")


def test_a_full_disk_rolls_back_and_keeps_stored_samples(tmp_path):
    path = filled(tmp_path / "c.sqlite", 50)
    out = _child(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # get EFBIG instead of being killed
        from cache.store import Entry, SampleStore
        from omniopd.errors import CacheFullError
        from providers.base import TeacherSample
        store = SampleStore({str(path)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))   # files may not grow past 256 KiB
        big = [Entry(i.to_bytes(16, "big"), (5 * 10**6 + i).to_bytes(16, "big"), 2.0, TeacherSample(text="y" * 4000))
               for i in range(400)]
        try:
            store.put_many(big)
            print("STORED")
        except CacheFullError as exc:
            print("FULL", exc)
    """)
    assert "FULL cache" in out.stdout and "rolled back" in out.stdout, out.stdout + out.stderr
    with SampleStore(path) as store:
        assert store.verify() == []
        assert store.stats()["samples"] == 50
        assert store.put_many([Entry(b"k" * 16, b"u" * 16, 3.0, TeacherSample(text="after"))]) == 1
