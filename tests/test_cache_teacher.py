"""CachedTeacher: read-through pools, write-behind, modes, replay misses, batching."""

from __future__ import annotations

import asyncio

import pytest

from cache.store import SampleStore
from cache.teacher import CachedTeacher
from omniopd.errors import CacheError, CacheFullError, CacheMissError
from providers.base import Teacher
from tests.cache_helpers import CountingTeacher, request


def run(coro):
    return asyncio.run(coro)


def test_is_a_teacher_and_serves_the_pool_before_calling(tmp_path):
    inner = CountingTeacher()
    ct = CachedTeacher(inner, tmp_path / "c.sqlite")
    assert isinstance(ct, Teacher) and ct.identity() == inner.identity() and ct.spec == inner.spec
    first = run(ct.sample(request("p", 3)))
    more = run(ct.sample(request("p", 5)))
    fewer = run(ct.sample(request("p", 2)))
    assert inner.calls == [("p", 3), ("p", 2)]  # the second call only paid for the shortfall
    assert [s.text for s in more[:3]] == [s.text for s in first]
    assert [s.cache_id for s in fewer] == [s.cache_id for s in first[:2]]
    assert all(s.cached for s in more[:3]) and not any(s.cached for s in more[3:])
    run(ct.aclose())
    assert inner.closed
    stats = SampleStore(tmp_path / "c.sqlite", "read-only").stats()
    assert stats["samples"] == 5
    assert (stats["requested"], stats["from_cache"], stats["from_teacher"]) == (10, 5, 5)


def test_a_new_process_reuses_what_an_earlier_one_bought(tmp_path):
    a = CachedTeacher(CountingTeacher(), tmp_path / "c.sqlite")
    bought = run(a.sample(request("p", 4)))
    a.close()
    inner = CountingTeacher()
    b = CachedTeacher(inner, tmp_path / "c.sqlite")
    again = run(b.sample(request("p", 4)))
    assert inner.calls == []
    assert [s.text for s in again] == [s.text for s in bought]
    other = run(b.sample(request("p", 4, question="something else")))  # another key: paid
    assert inner.calls == [("p", 4)] and len(other) == 4
    b.close()


def test_concurrent_identical_requests_pay_once(tmp_path):
    inner = CountingTeacher(delay_s=0.01)
    ct = CachedTeacher(inner, tmp_path / "c.sqlite")

    async def go():
        return await asyncio.gather(*(ct.sample(request("same", 3)) for _ in range(5)))

    results = run(go())
    assert inner.calls == [("same", 3)]
    assert {tuple(s.cache_id for s in r) for r in results} == {tuple(s.cache_id for s in results[0])}
    ct.close()


def test_concurrent_lookups_are_one_batched_query(tmp_path):
    ct = CachedTeacher(CountingTeacher(), tmp_path / "c.sqlite")
    async def go():
        return await asyncio.gather(*(ct.sample(request(f"p{i}", 2)) for i in range(40)))

    run(go())
    ct.flush()
    queries = []
    real = ct.store.pools
    ct.store.pools = lambda keys: (queries.append(len(keys)), real(keys))[1]
    out = run(go())
    assert queries == [40] and all(len(r) == 2 for r in out)
    ct.close()


def test_unwritten_samples_are_served_before_they_reach_disk(tmp_path):
    inner = CountingTeacher()
    ct = CachedTeacher(inner, tmp_path / "c.sqlite", flush_interval_s=3600, max_batch=10**6)
    run(ct.sample(request("p", 3)))
    reader = SampleStore(tmp_path / "c.sqlite", "read-only")
    assert reader.stats()["samples"] == 0  # still queued in the write-behind
    run(ct.sample(request("p", 3)))
    assert inner.calls == [("p", 3)]
    ct.flush()
    assert reader.stats()["samples"] == 3
    ct.close()


def test_modes_read_only_and_off_never_write(tmp_path):
    path = tmp_path / "c.sqlite"
    rw = CachedTeacher(CountingTeacher(), path)
    run(rw.sample(request("p", 2)))
    rw.close()
    inner = CountingTeacher()
    ro = CachedTeacher(inner, path, "read-only")
    out = run(ro.sample(request("p", 3)))
    assert len(out) == 3 and inner.calls == [("p", 1)]
    ro.close()
    assert SampleStore(path, "read-only").stats()["samples"] == 2
    inner = CountingTeacher()
    off = CachedTeacher(inner, None, "off")
    out = run(off.sample(request("p", 2)))
    assert inner.calls == [("p", 2)] and all(len(s.cache_id) == 32 for s in out)
    assert set(off.entries_for([s.cache_id for s in out])) == {s.cache_id for s in out}
    with pytest.raises(CacheError, match="cache-mode"):
        CachedTeacher(inner, path, "sometimes")


def test_without_a_teacher_misses_raise_and_short_pools_are_served(tmp_path):
    path = tmp_path / "c.sqlite"
    rw = CachedTeacher(CountingTeacher(), path)
    run(rw.sample(request("p", 2)))
    rw.close()
    replay = CachedTeacher(None, path, "read-only", identity=CountingTeacher().identity())
    assert len(run(replay.sample(request("p", 2)))) == 2
    assert len(run(replay.sample(request("p", 5)))) == 2  # served short, like a partial teacher failure
    with pytest.raises(CacheMissError, match="no stored teacher sample"):
        run(replay.sample(request("never asked", 2)))
    assert replay.counts["misses"] == 3 + 2
    other = CachedTeacher(None, path, "read-only", identity={"provider": "other"})
    with pytest.raises(CacheMissError):
        run(other.sample(request("p", 2)))  # the teacher identity is part of the key


def test_partial_teacher_failure_is_topped_up_later(tmp_path):
    inner = CountingTeacher(fail_after=2)
    ct = CachedTeacher(inner, tmp_path / "c.sqlite")
    assert len(run(ct.sample(request("p", 5)))) == 2
    inner.fail_after = None
    assert len(run(ct.sample(request("p", 5)))) == 5
    assert inner.calls == [("p", 5), ("p", 3)]
    ct.close()


def test_works_across_event_loops(tmp_path):
    inner = CountingTeacher()
    ct = CachedTeacher(inner, tmp_path / "c.sqlite")
    for _ in range(3):
        asyncio.run(ct.sample(request("p", 2)))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(ct.sample(request("p", 2)))
    loop.close()
    assert inner.calls == [("p", 2)]
    ct.close()


def test_a_failed_write_is_reported_and_keeps_stored_data(tmp_path):
    path = tmp_path / "c.sqlite"
    with SampleStore(path) as s:
        pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
    ct = CachedTeacher(CountingTeacher(), path)
    run(ct.sample(request("small", 1)))
    ct.flush()
    ct._writer.store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # the file may not grow further
    with pytest.raises(CacheFullError, match="disk is full or the file cannot grow"):
        for i in range(200):
            run(ct.sample(request("x" * 2000 + str(i), 3)))
            ct.flush()
    ct.close()
    with SampleStore(path, "read-only") as s:
        assert s.verify() == []
        assert s.stats()["samples"] >= 1
