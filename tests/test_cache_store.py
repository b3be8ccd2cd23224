"""The SQLite sample store: pools, ids, migrations, stats, prune, JSONL export/import."""

from __future__ import annotations

import io
import sqlite3

import pytest

from cache import packs
from cache.jsonl import export_jsonl, import_jsonl
from cache.schema import SCHEMA_VERSION, migrate, read_version
from cache.store import Entry, SampleStore
from omniopd.errors import CacheError, DataError
from providers.base import TeacherSample


def entry(key: int, uid: int, text: str, created: float = 100.0, model: str = "m1", **kw) -> Entry:
    return Entry(key.to_bytes(16, "big"), uid.to_bytes(16, "big"), created,
                 TeacherSample(text=text, model=model, teacher=f"t:{model}", cost_usd=0.5, **kw))


def test_pools_keep_insertion_order_and_every_field(tmp_path):
    with SampleStore(tmp_path / "c.sqlite") as store:
        assert store.put_many([entry(1, 10, "a"), entry(2, 20, "x"), entry(1, 11, "b", extra={"logprob": -1.5}, exact=False)]) == 3
        store.put_many([entry(1, 12, "c")])
        pools = store.get_many([(1).to_bytes(16, "big"), (2).to_bytes(16, "big"), (3).to_bytes(16, "big")])
    assert [s.text for s in pools[(1).to_bytes(16, "big")]] == ["a", "b", "c"]
    assert [s.text for s in pools[(2).to_bytes(16, "big")]] == ["x"]
    assert (3).to_bytes(16, "big") not in pools
    b = pools[(1).to_bytes(16, "big")][1]
    assert b.extra == {"logprob": -1.5} and (b.cache_id, b.cached) == ((11).to_bytes(16, "big").hex(), True)
    assert (b.exact, b.model, b.teacher, b.cost_usd) == (False, "m1", "t:m1", 0.5)


def test_same_uid_is_stored_once_and_batches_beyond_the_parameter_limit(tmp_path):
    with SampleStore(tmp_path / "c.sqlite") as store:
        entries = [entry(k, k, f"s{k}") for k in range(1, 1201)]
        assert store.put_many(entries) == 1200
        assert store.put_many(entries[:10]) == 0  # re-import / re-copy adds nothing
        pools = store.get_many([e.key for e in entries])
        assert len(pools) == 1200
        assert set(store.by_uid([e.uid for e in entries[:700]])) == {e.uid for e in entries[:700]}
        assert store.stats()["samples"] == 1200


def test_migrates_a_version_1_file_and_keeps_its_samples(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    migrate(conn, 0, target=1)
    conn.execute("INSERT INTO origins (id, teacher, model) VALUES (1, 't', 'm')")
    conn.execute("INSERT INTO samples (key, uid, origin, created, text, finish_reason, exact, input_tokens, output_tokens, "
                 "cache_read_tokens, cache_write_tokens, cost_usd, latency_s) VALUES (?, ?, 1, 1.0, 'kept', 'stop', 1, 0, 0, 0, 0, 0.25, 0)",
                 (b"k" * 16, b"u" * 16))
    conn.execute("COMMIT")
    conn.close()
    with pytest.raises(CacheError, match="older schema version 1.*omniopd cache migrate"):
        SampleStore(path, "read-only")
    with SampleStore(path) as store:
        assert read_version(store.conn) == SCHEMA_VERSION
        assert [s.text for s in store.get_many([b"k" * 16])[b"k" * 16]] == ["kept"]
        assert store.verify() == []


def test_stats_and_prune_by_age_and_model(tmp_path):
    with SampleStore(tmp_path / "c.sqlite") as store:
        store.put_many([entry(1, 1, "old", created=10.0), entry(1, 2, "new", created=1000.0),
                        entry(2, 3, "other", created=1000.0, model="m2")])
        s = store.stats()
        assert (s["samples"], s["keys"], s["cost_usd"]) == (3, 2, 1.5)
        assert {o["model"]: o["samples"] for o in s["by_origin"]} == {"m1": 2, "m2": 1}
        assert store.delete(before=500.0, dry_run=True) == 1
        assert store.stats()["samples"] == 3
        assert store.delete(before=500.0) == 1
        assert store.delete(model="m2") == 1
        assert [s.text for p in store.get_many([(1).to_bytes(16, "big"), (2).to_bytes(16, "big")]).values() for s in p] == ["new"]
        with pytest.raises(CacheError, match="refusing to delete everything"):
            store.delete()


def test_jsonl_round_trip_moves_samples_between_files(tmp_path):
    with SampleStore(tmp_path / "a.sqlite") as a:
        a.put_many([entry(1, 1, "héllo\nworld", extra={"x": [1, 2]}), entry(2, 2, "b", exact=False)])
        buf = io.StringIO()
        assert export_jsonl(a, buf) == 2
        originals = a.get_many([(1).to_bytes(16, "big"), (2).to_bytes(16, "big")])
    lines = buf.getvalue().splitlines()
    with SampleStore(tmp_path / "b.sqlite") as b:
        assert import_jsonl(b, lines) == (2, 0)
        assert import_jsonl(b, lines) == (0, 2)
        assert b.get_many(list(originals)) == originals


def test_import_names_the_bad_line_and_keeps_the_good_ones(tmp_path):
    with SampleStore(tmp_path / "a.sqlite") as a:
        a.put_many([entry(1, 1, "good")])
        buf = io.StringIO()
        export_jsonl(a, buf)
    lines = buf.getvalue().splitlines() + ['{"key": "zz"}']
    with SampleStore(tmp_path / "b.sqlite") as b:
        with pytest.raises(DataError, match=r"dump.jsonl:3: not an omniopd cache sample"):
            import_jsonl(b, lines, "dump.jsonl")
        assert b.stats()["samples"] == 1
        with pytest.raises(DataError, match=r"x.jsonl:1: not valid JSON"):
            import_jsonl(b, ["{not json"], "x.jsonl")


def _version_3_file(path, pools):
    """A file as schema version 3 wrote it: samples only, no packed pools."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    migrate(conn, 0, target=3)
    conn.execute("INSERT INTO origins (id, teacher, model) VALUES (1, 't:a', 'a'), (2, 't:b', 'b')")
    for key, samples in pools.items():
        for uid, created, text, origin, extra in samples:
            conn.execute("INSERT INTO samples (key, uid, origin, created, text, finish_reason, exact, input_tokens, output_tokens, "
                         "cache_read_tokens, cache_write_tokens, cost_usd, latency_s, extra) "
                         "VALUES (?, ?, ?, ?, ?, 'length', 0, 3, 4, 1, 2, 0.125, 0.5, ?)",
                         (key.to_bytes(16, "big"), uid.to_bytes(16, "big"), origin, created, text, extra))
    conn.execute("COMMIT")
    conn.close()


def test_migrates_a_version_3_file_into_packed_pools_in_pool_order(tmp_path):
    path = tmp_path / "v3.sqlite"
    # inserted out of order: a pool is ordered by (created, uid), whatever order rows were written in
    _version_3_file(path, {1: [(12, 5.0, "third", 1, None), (10, 1.0, "first", 2, '{"logprob": -2.5}'), (11, 1.0, "second", 1, None)],
                           2: [(20, 9.0, "only", 2, None)]})
    with SampleStore(path) as store:
        assert read_version(store.conn) == SCHEMA_VERSION == 6
        assert store.verify() == []
        pools = store.get_many([(1).to_bytes(16, "big"), (2).to_bytes(16, "big"), (3).to_bytes(16, "big")])
        exported = list(store.iter_entries())  # read from `samples`, not from the packs
    assert [s.text for s in pools[(1).to_bytes(16, "big")]] == ["first", "second", "third"]
    assert [s.text for s in pools[(2).to_bytes(16, "big")]] == ["only"]
    assert (3).to_bytes(16, "big") not in pools
    first = pools[(1).to_bytes(16, "big")][0]
    assert first == TeacherSample(text="first", finish_reason="length", input_tokens=3.0, output_tokens=4.0, cache_read_tokens=1.0,
                                  cache_write_tokens=2.0, cost_usd=0.125, model="b", teacher="t:b", latency_s=0.5, exact=False,
                                  extra={"logprob": -2.5}, cache_id=(10).to_bytes(16, "big").hex(), cached=True)
    assert [e.sample for e in exported] == [*pools[(1).to_bytes(16, "big")], *pools[(2).to_bytes(16, "big")]]


def test_packing_every_pool_pages_through_pools_longer_than_a_page(tmp_path):
    path = tmp_path / "v3.sqlite"
    _version_3_file(path, {k: [(100 * k + i, float(i), f"{k}.{i}", 1, None) for i in range(n)] for k, n in ((1, 1), (2, 5), (3, 2), (4, 3))})
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    migrate(conn, 3)
    packs.rebuild_all(conn, batch=2)  # pages of 2 rows: pools split across pages and one longer than a page
    conn.execute("COMMIT")
    conn.close()
    with SampleStore(path) as store:
        assert store.verify() == []
        pools = store.get_many([k.to_bytes(16, "big") for k in range(1, 5)])
        assert {int.from_bytes(k, "big"): [s.text for s in p] for k, p in pools.items()} == {
            k: [f"{k}.{i}" for i in range(n)] for k, n in ((1, 1), (2, 5), (3, 2), (4, 3))}


def test_pools_are_lazy_sequences_and_stay_in_step_with_writes_and_prunes(tmp_path):
    with SampleStore(tmp_path / "c.sqlite") as store:
        store.put_many([entry(1, 10 + i, f"s{i}", created=float(i)) for i in range(5)])
        pool = store.pools([(1).to_bytes(16, "big")])[(1).to_bytes(16, "big")]
        assert len(pool) == 5 and pool._entries is None  # nothing decoded to know its size
        assert pool[1] is pool[1] and pool[-1].sample.text == "s4" and [e.sample.text for e in pool[1:3]] == ["s1", "s2"]
        with pytest.raises(IndexError):
            pool[5]
        samples = store.get_many([(1).to_bytes(16, "big")])[(1).to_bytes(16, "big")]
        assert samples == [e.sample for e in pool] and samples != [e.sample for e in pool[:4]]
        store.put_many([entry(1, 9, "older", created=-1.0), entry(1, 10, "duplicate uid, ignored")])
        assert [s.text for s in store.get_many([(1).to_bytes(16, "big")])[(1).to_bytes(16, "big")]] == ["older", "s0", "s1", "s2", "s3", "s4"]
        assert store.delete(before=2.5) == 4
        assert [s.text for s in store.get_many([(1).to_bytes(16, "big")])[(1).to_bytes(16, "big")]] == ["s3", "s4"]
        assert store.delete(before=100.0) == 2
        assert store.get_many([(1).to_bytes(16, "big")]) == {}
        assert store.verify() == []


def test_verify_reports_packed_pools_out_of_step_with_samples(tmp_path):
    with SampleStore(tmp_path / "c.sqlite") as store:
        store.put_many([entry(1, 1, "a"), entry(2, 2, "b")])
        store.conn.execute("DELETE FROM samples WHERE key = ?", ((1).to_bytes(16, "big"),))  # behind the store's back
        store.conn.execute("UPDATE pools SET n = 7 WHERE key = ?", ((2).to_bytes(16, "big"),))
        assert store.verify() == ["1 pools whose packed copy (table pools) is missing or disagrees with their samples",
                                  "1 packed pools with no samples"]
