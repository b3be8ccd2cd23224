"""Pay once across processes: a key being bought by one process is waited for, not bought again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cache.store import SampleStore
from cache.teacher import CachedTeacher, request_key
from tests.cache_helpers import CountingTeacher, request

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, OWN, SHARED, N = 20, 10, 5, 3

BUYER = textwrap.dedent("""
    import asyncio, json, sys, time
    from pathlib import Path
    from cache.teacher import CachedTeacher
    from tests.cache_helpers import CountingTeacher, request

    path, name, go, lease = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "on"
    inner = CountingTeacher(delay_s=0.02)
    inner.spec = f"counting:{name}"
    teacher = CachedTeacher(inner, path, flush_interval_s=0.005, max_batch=64, lease_s=30.0 if lease else None)
    while not go.exists():
        time.sleep(0.005)

    async def main():
        for rnd in range(%(rounds)d):
            reqs = [request(f"{name} {rnd} {i}", %(n)d) for i in range(%(own)d)]
            reqs += [request(f"shared {rnd} {i}", %(n)d) for i in range(%(shared)d)]
            for got in await asyncio.gather(*(teacher.sample(r) for r in reqs)):
                assert len(got) == %(n)d
            await teacher.aflush()

    asyncio.run(main())
    teacher.close()
    print(json.dumps({"bought": sum(n for _, n in inner.calls), "waits": teacher.lease_waits}))
""" % {"rounds": ROUNDS, "own": OWN, "shared": SHARED, "n": N})


def _three_processes(tmp_path: Path, lease: str) -> tuple[int, int, list[dict]]:
    path, go = tmp_path / f"shared-{lease}.sqlite", tmp_path / f"go-{lease}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", BUYER, str(path), name, str(go), lease], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in "abc"]
    time.sleep(1.0)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    with SampleStore(path, "read-only") as store:
        stored = store.stats()["samples"]
        assert store.verify() == []
    bought = sum(r["bought"] for r in results)
    assert stored == bought  # everything bought was stored
    return bought, stored, results


def test_three_processes_buy_each_shared_pool_once(tmp_path):
    needed = 3 * ROUNDS * OWN * N + ROUNDS * SHARED * N  # each own pool once, each shared pool once
    off, _, _ = _three_processes(tmp_path, "off")
    on, stored, results = _three_processes(tmp_path, "on")
    print(f"3 processes, {ROUNDS * SHARED} shared pools of {N}: samples needed {needed}; "
          f"leases off: bought {off} (+{off - needed}, {100 * (off - needed) / needed:.1f}%); "
          f"leases on: bought {on} (+{on - needed}), {sum(r['waits'] for r in results)} waits")
    assert on == needed  # extra samples bought = 0
    assert off >= on


def test_a_crashed_holders_lease_runs_out(tmp_path):
    path = tmp_path / "c.sqlite"
    req = request("p", 2)
    key = request_key(CountingTeacher().identity(), req)
    with SampleStore(path) as store:  # a holder that claimed the key and died
        assert store.claim([key], "dead-holder", ttl_s=0.5) == {key: None}
        assert store.claim([key], "someone-else", ttl_s=0.5)[key] is not None  # held
    inner = CountingTeacher()
    ct = CachedTeacher(inner, path, lease_s=5.0, poll_s=0.01)
    t0 = time.monotonic()
    got = asyncio.run(ct.sample(req))
    waited = time.monotonic() - t0
    ct.close()
    assert len(got) == 2 and inner.calls == [("p", 2)] and ct.lease_waits > 0
    print(f"waited {waited:.2f} s for a dead holder's 0.5 s lease, then bought")


def test_a_failed_purchase_frees_the_key_at_once(tmp_path):
    path = tmp_path / "c.sqlite"

    class Failing(CountingTeacher):
        async def sample(self, request):
            raise RuntimeError("boom")

    ct = CachedTeacher(Failing(), path, lease_s=60.0)
    try:
        asyncio.run(ct.sample(request("p", 2)))
    except RuntimeError:
        pass
    ct.close()
    key = request_key(CountingTeacher().identity(), request("p", 2))
    with SampleStore(path) as store:  # not held for 60 s: another process may buy it now
        assert store.claim([key], "next", ttl_s=1.0) == {key: None}
