"""`omniopd cache stats|verify|export|import|prune|migrate` through the real CLI entry point."""

from __future__ import annotations

import asyncio
import json

from cache.store import SampleStore
from cache.teacher import CachedTeacher
from omniopd.cli import main
from tests.cache_helpers import CountingTeacher, request


def bought(path, prefixes=("a", "b"), model="m1"):
    ct = CachedTeacher(CountingTeacher(model=model), path)

    async def go():
        for p in prefixes:
            await ct.sample(request(p, 2))
        await ct.sample(request(prefixes[0], 2))  # served from the cache

    asyncio.run(go())
    ct.close()


def test_stats_reports_counts_spend_and_hit_rate(tmp_path, capsys):
    path = tmp_path / "c.sqlite"
    bought(path)
    assert main(["cache", "stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 in 2 pools" in out and "$0.0040" in out and "33.3% (2 of 6" in out and "counting:m1 [m1]: 4 samples" in out
    assert main(["cache", "stats", str(path), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["samples"], s["keys"], s["from_cache"], s["requested"]) == (4, 2, 2, 6)
    assert s["bytes_per_sample"] > 0


def test_default_path_comes_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMNIOPD_CACHE_DIR", str(tmp_path / "shared"))
    bought(tmp_path / "shared" / "teacher.sqlite")
    assert main(["cache", "stats"]) == 0
    assert str(tmp_path / "shared" / "teacher.sqlite") in capsys.readouterr().out
    assert main(["cache", "stats", str(tmp_path / "missing.sqlite")]) == 2
    assert "no cache at" in capsys.readouterr().err


def test_export_import_moves_samples_to_another_cache(tmp_path, capsys):
    src, dst, dump = tmp_path / "src.sqlite", tmp_path / "dst.sqlite", tmp_path / "dump.jsonl"
    bought(src)
    assert main(["cache", "export", str(src), "-o", str(dump)]) == 0
    assert len(dump.read_text().splitlines()) == 1 + 4
    assert main(["cache", "import", str(dump), "--cache", str(dst)]) == 0
    assert main(["cache", "import", str(dump), "--cache", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "added 4 samples, 0 already present" in out and "added 0 samples, 4 already present" in out
    inner = CountingTeacher()
    ct = CachedTeacher(inner, dst)
    asyncio.run(ct.sample(request("a", 2)))  # the other machine pays nothing for what was imported
    ct.close()
    assert inner.calls == []
    assert main(["cache", "import", str(tmp_path / "nope.jsonl"), "--cache", str(dst)]) == 2


def test_prune_by_model_and_verify(tmp_path, capsys):
    path = tmp_path / "c.sqlite"
    bought(path, ("a", "b"), model="old-model")
    bought(path, ("c",), model="new-model")
    assert main(["cache", "prune", str(path), "--model", "old-model", "--dry-run"]) == 0
    assert main(["cache", "prune", str(path), "--model", "old-model", "--vacuum"]) == 0
    assert main(["cache", "prune", str(path), "--older-than", "1"]) == 0
    out = capsys.readouterr().out
    assert "would delete 4 samples" in out and "deleted 4 samples" in out and "deleted 0 samples" in out
    with SampleStore(path, "read-only") as store:
        assert [o["model"] for o in store.stats()["by_origin"]] == ["new-model"]
    assert main(["cache", "verify", str(path)]) == 0
    assert main(["cache", "prune", str(path)]) == 2  # refuses to delete everything
    assert main(["cache", "migrate", str(path)]) == 0
