"""The cache cases from the fault pass: a directory, an empty file, import onto a non-cache
file, and read-only commands that must create nothing beside the file."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from cache.store import Entry, SampleStore
from cache.teacher import CachedTeacher
from omniopd.cli import main as cli_main
from omniopd.errors import CacheCorruptError, CacheError
from providers.base import TeacherSample
from tests.cache_helpers import CountingTeacher


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _filled(path: Path, n: int = 20) -> Path:
    with SampleStore(path) as store:
        store.put_many([Entry(i.to_bytes(16, "big"), (10**6 + i).to_bytes(16, "big"), 1.0,
                              TeacherSample(text=f"sample {i}", model="m", cost_usd=0.01)) for i in range(n)])
    return path


def _beside(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


def _export(tmp_path: Path) -> Path:
    src = _filled(tmp_path / "src.sqlite", 5)
    out = tmp_path / "samples.jsonl"
    assert cli_main(["cache", "export", str(src), "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("mode", ["read-write", "read-only"])
def test_a_directory_is_a_clear_cache_error(tmp_path, mode):
    d = tmp_path / "cachedir"
    d.mkdir()
    with pytest.raises(CacheError, match="is a directory"):
        SampleStore(d, mode)
    with pytest.raises(CacheError, match="is a directory"):
        CachedTeacher(CountingTeacher(), d)
    assert list(d.iterdir()) == []


def test_cli_cache_flag_at_a_directory_exits_2_without_a_traceback(tmp_path, capsys):
    d = tmp_path / "cachedir"
    d.mkdir()
    src = _export(tmp_path)
    assert cli_main(["cache", "import", str(src), "--cache", str(d)]) == 2
    assert "is a directory" in capsys.readouterr().err and list(d.iterdir()) == []


@pytest.mark.parametrize("mode", ["read-write", "read-only"])
def test_a_zero_byte_file_is_refused_untouched(tmp_path, mode):
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    before = _beside(path)
    with pytest.raises(CacheCorruptError, match="empty file") as info:
        SampleStore(path, mode)
    assert "migrate" not in str(info.value)
    assert path.stat().st_size == 0 and _beside(path) == before


def test_cache_import_onto_an_empty_or_foreign_file_changes_nothing(tmp_path, capsys):
    src = _export(tmp_path)
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("my notes, not a cache\n" * 20)
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    for target in (empty, text, foreign):
        before, beside = _digest(target), _beside(target)
        assert cli_main(["cache", "import", str(src), "--cache", str(target)]) == 2
        err = capsys.readouterr().err
        assert "not modified" in err and "Traceback" not in err
        assert _digest(target) == before and _beside(target) == beside


def test_read_only_commands_create_nothing_beside_the_cache(tmp_path, capsys):
    path = _filled(tmp_path / "c.sqlite")
    assert not Path(f"{path}-wal").exists()  # a closed WAL database: checkpointed, no side files
    os.chmod(path, 0o444)
    try:
        before, digest = _beside(path), _digest(path)
        assert cli_main(["cache", "stats", str(path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["samples"] == 20
        assert cli_main(["cache", "verify", str(path)]) == 0
        capsys.readouterr()
        assert cli_main(["cache", "export", str(path), "-o", "-"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 21  # a header line, then the samples
        assert _beside(path) == before and _digest(path) == digest  # no -wal, no -shm
    finally:
        os.chmod(path, 0o644)


def test_inspection_still_reads_a_live_write_ahead_log(tmp_path):
    path = _filled(tmp_path / "c.sqlite", 3)
    writer = SampleStore(path)  # open: later commits sit in the -wal until a checkpoint
    writer.put_many([Entry(b"k" * 16, b"u" * 16, 2.0, TeacherSample(text="late", model="m"))])
    try:
        assert Path(f"{path}-wal").stat().st_size > 0
        with SampleStore(path, "read-only", creates_nothing=True) as store:
            assert store.stats()["samples"] == 4
    finally:
        writer.close()
