"""Cache throughput at scale: batched lookups/s and inserts/s at 10^6 stored samples, bytes/sample.

    PYTHONPATH=. python bench/cache_bench.py            # 10^6 samples (about a minute to build)
    PYTHONPATH=. python bench/cache_bench.py --samples 100000

The store is filled the way training fills it: pools of `--per-key` samples (N = 10, the paper's
default) of `--text-chars` characters (a 50-token chunk is ~200 characters), committed in
batched transactions. Then, against the full store:
- batched lookups: `SampleStore.get_many` on random batches of `--batch` keys (the shape the
  `CachedTeacher` produces: all forks of a step in one query), each returning its whole pool
  (a lazy `SamplePool`, one packed row per key) — the target is >= 50 000 lookups/s;
- the same, decoding every sample of every pool into a `TeacherSample` (what a caller that
  reads whole pools pays);
- baselines in the same run (the ratios shown): the same keys one query per key, and the
  row-per-sample read of schema 3 (10 rows per key from `samples`, an `Entry` + `TeacherSample`
  built per row), which is what `get_many` did before pools were packed;
- through `CachedTeacher.sample` (all hits, `--batch` concurrent requests per event-loop turn,
  each asking for a full pool);
- inserts/s in batched transactions, against a baseline of one transaction per sample.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.store import _COLUMNS, _POOL_ORDER, Entry, SampleStore  # noqa: E402
from cache.teacher import CachedTeacher, request_key  # noqa: E402
from providers.base import Message, TeacherRequest, TeacherSample  # noqa: E402

WORDS = ("so the total is then we add multiply each apple costs dollars and she has left over first "
         "second answer step because therefore").split()
IDENTITY = {"provider": "openai", "endpoint": "https://api.openai.com/v1", "model": "gpt-5-mini", "mode": "wrapper"}


def make_request(i: int) -> TeacherRequest:
    return TeacherRequest(messages=(Message("user", f"Question {i}: how many apples?"),), prefix=f"Let us think {i}",
                          n=10, max_tokens=65)


def text(rng: random.Random, chars: int) -> str:
    out, n = [], 0
    while n < chars:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


def fill(store: SampleStore, keys: list[bytes], per_key: int, chars: int, chunk: int) -> float:
    rng = random.Random(0)
    pending: list[Entry] = []
    t0 = time.perf_counter()
    for k in keys:
        for _ in range(per_key):
            pending.append(Entry(k, os.urandom(16), time.time(), TeacherSample(
                text=text(rng, chars), finish_reason="length", input_tokens=120.0, output_tokens=50.0,
                cost_usd=0.00012, model="gpt-5-mini-2026-01-01", teacher="openai:gpt-5-mini", latency_s=0.8)))
        if len(pending) >= chunk:
            store.put_many(pending)
            pending = []
    store.put_many(pending)
    return time.perf_counter() - t0


def rows_per_sample(store: SampleStore, keys: list[bytes]) -> dict[bytes, list[Entry]]:
    """The schema-3 lookup, kept as a baseline: every row of every pool read and built into objects."""
    out: dict[bytes, list[Entry]] = {}
    for i in range(0, len(keys), 500):
        part = keys[i: i + 500]
        rows = store.conn.execute(f"SELECT {_COLUMNS} FROM samples WHERE key IN ({','.join('?' * len(part))}) {_POOL_ORDER}",
                                  part).fetchall()
        for row in rows:
            out.setdefault(row[0], []).append(Entry(row[0], row[1], row[2], store._sample(row[1].hex(), row[3:])))
    return out


def timed(fn, batches: list[list[bytes]]) -> tuple[float, int]:
    """Lookups/s of `fn` over `batches`, and how many samples it served (decoded or not)."""
    t0 = time.perf_counter()
    served = 0
    for b in batches:
        served += sum(len(v) for v in fn(b).values())
    return sum(map(len, batches)) / (time.perf_counter() - t0), served


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--per-key", type=int, default=10)
    ap.add_argument("--text-chars", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1000, help="keys per batched lookup")
    ap.add_argument("--lookups", type=int, default=100_000, help="batched lookups to time")
    ap.add_argument("--dir", default=None, help="where to build the cache (default: a temporary directory)")
    args = ap.parse_args()

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="omniopd-cache-bench-"))
    path = workdir / "bench.sqlite"
    for p in workdir.glob("bench.sqlite*"):
        p.unlink()
    n_keys = args.samples // args.per_key
    requests = [make_request(i) for i in range(n_keys)]
    keys = [request_key(IDENTITY, r) for r in requests]
    store = SampleStore(path)

    fill_s = fill(store, keys, args.per_key, args.text_chars, chunk=10_000)
    inserts_per_s = n_keys * args.per_key / fill_s
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = store.file_bytes()

    # inserts, baseline: one transaction per sample (a store that writes through per sample)
    rng = random.Random(1)
    single = [Entry(os.urandom(16), os.urandom(16), time.time(), TeacherSample(text=text(rng, args.text_chars))) for _ in range(2000)]
    t0 = time.perf_counter()
    for e in single:
        store.put_many([e])
    single_per_s = len(single) / (time.perf_counter() - t0)

    # batched lookups
    rng = random.Random(2)
    batches = [rng.sample(keys, args.batch) for _ in range(max(1, args.lookups // args.batch))]
    store.get_many(batches[0])  # warm the page cache the same way for every measurement
    rows_per_sample(store, batches[0])
    batched_per_s, served = timed(store.get_many, batches)
    assert served == len(batches) * args.batch * args.per_key, "every looked-up pool must be complete"
    decoded_per_s, _ = timed(lambda b: {k: [s.text for s in p] for k, p in store.get_many(b).items()}, batches)
    few = batches[: max(1, len(batches) // 5)]  # the baseline is slow: a fifth of the batches
    old_per_s, old_served = timed(lambda b: rows_per_sample(store, b), few)
    assert old_served == len(few) * args.batch * args.per_key

    # baseline: one query per key
    one_keys = [k for b in batches[: max(1, 10_000 // args.batch)] for k in b]
    t0 = time.perf_counter()
    for k in one_keys:
        store.get_many([k])
    single_lookup_per_s = len(one_keys) / (time.perf_counter() - t0)

    # through the CachedTeacher (all hits: no inner teacher is ever called)
    teacher = CachedTeacher(None, store, "read-only", identity=IDENTITY)
    chosen = [requests[i] for i in rng.sample(range(n_keys), min(n_keys, 20 * args.batch))]

    async def serve():
        for i in range(0, len(chosen), args.batch):
            await asyncio.gather(*(teacher.sample(r) for r in chosen[i: i + args.batch]))

    t0 = time.perf_counter()
    asyncio.run(serve())
    teacher_per_s = len(chosen) / (time.perf_counter() - t0)
    assert teacher.counts["misses"] == 0
    store.close()

    figures = {
        "stored_samples": n_keys * args.per_key,
        "pools": n_keys,
        "text_chars": args.text_chars,
        "bytes_per_sample": size / (n_keys * args.per_key),
        "file_mb": size / 1e6,
        "inserts_per_s_batched": inserts_per_s,
        "inserts_per_s_one_txn_each": single_per_s,
        "lookups_per_s_batched": batched_per_s,
        "lookups_per_s_batched_all_decoded": decoded_per_s,
        "samples_per_s_batched_all_decoded": decoded_per_s * args.per_key,
        "lookups_per_s_schema3_rows": old_per_s,
        "lookups_per_s_one_query_each": single_lookup_per_s,
        "lookups_per_s_cached_teacher": teacher_per_s,
        "load_average_1m_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    print(f"omniopd cache bench: {figures['stored_samples']:,} samples in {n_keys:,} pools of {args.per_key}, "
          f"{args.text_chars}-char texts, file {figures['file_mb']:.0f} MB; load average {figures['load_average_1m_end']:.1f} "
          f"on {figures['cpus']} CPUs at the end")
    print(f"  bytes/sample on disk        {figures['bytes_per_sample']:.0f}")
    print(f"  inserts/s batched           {inserts_per_s:,.0f}   (one transaction per sample: {single_per_s:,.0f}; "
          f"ratio {inserts_per_s / single_per_s:.1f}x)")
    print(f"  lookups/s batched ({args.batch}/query) {batched_per_s:,.0f}   (one query per key: {single_lookup_per_s:,.0f}, "
          f"ratio {batched_per_s / single_lookup_per_s:.1f}x; schema-3 rows per sample: {old_per_s:,.0f}, "
          f"ratio {batched_per_s / old_per_s:.1f}x)   target >= 50,000: {'met' if batched_per_s >= 50_000 else 'NOT met'}")
    print(f"  ... every sample decoded    {decoded_per_s:,.0f}   lookups/s = {decoded_per_s * args.per_key:,.0f} TeacherSamples/s "
          f"(ratio to schema-3 rows {decoded_per_s / old_per_s:.1f}x)")
    print(f"  lookups/s via CachedTeacher {teacher_per_s:,.0f}   (each serving a full pool of {args.per_key} TeacherSamples)")
    print(json.dumps(figures))
    if args.dir is None:
        for p in workdir.glob("bench.sqlite*"):
            p.unlink()
        workdir.rmdir()


if __name__ == "__main__":
    main()
