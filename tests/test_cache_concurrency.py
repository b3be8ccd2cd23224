"""Several processes, one cache: concurrent writers lose nothing and see no errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cache.store import SampleStore

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import asyncio, json, os, sys, time
    from pathlib import Path
    from cache.teacher import CachedTeacher
    from tests.cache_helpers import CountingTeacher, request

    path, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    inner = CountingTeacher(delay_s=0.002)   # long enough for the two runs to interleave
    inner.spec = f"counting:{name}"   # who produced a sample stays visible in the store
    teacher = CachedTeacher(inner, path, flush_interval_s=0.005, max_batch=64)
    while not go.exists():
        time.sleep(0.01)

    async def main():
        fresh = []
        for rnd in range(20):
            # 10 keys of its own and 5 shared with the other process per round
            reqs = [request(f"{name} {rnd} {i}", 3) for i in range(10)] + [request(f"shared {rnd} {i}", 3) for i in range(5)]
            for got in await asyncio.gather(*(teacher.sample(r) for r in reqs)):
                fresh += [s.cache_id for s in got if not s.cached]
            await teacher.aflush()
        return fresh

    ids = asyncio.run(main())
    teacher.close()
    print(json.dumps({"fresh": ids, "calls": len(inner.calls)}))
""")


def test_two_processes_write_one_cache_concurrently(tmp_path):
    path = tmp_path / "shared.sqlite"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    time.sleep(0.5)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    fresh = [cid for r in results for cid in r["fresh"]]
    assert len(fresh) == len(set(fresh))
    with SampleStore(path, "read-only") as store:
        stored = store.by_uid([bytes.fromhex(c) for c in fresh])
        stats = store.stats()
        assert store.verify() == []
    assert len(stored) == len(fresh)  # every sample either process bought is present
    assert stats["samples"] == len(fresh)
    # each process's own keys: 20 rounds * 10 keys * 3 samples; shared keys: at least one full pool each
    assert stats["samples"] >= 2 * 20 * 10 * 3 + 20 * 5 * 3
    assert {o["teacher"] for o in stats["by_origin"]} == {"counting:a", "counting:b"}
