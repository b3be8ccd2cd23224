"""What the cross-process leases cost a run that misses the cache: misses/s with leases on vs off.

    PYTHONPATH=. python bench/lease_overhead.py [--steps 20] [--forks 80] [--n 10]

Each step sends `--forks` concurrent requests for new keys (every one a miss, as in a run's
first epoch) through `CachedTeacher` to an in-process teacher that answers at once — the worst
case for the lease's extra transactions (a real teacher takes 0.5-5 s per request, so the lease's
milliseconds vanish there). Prints misses per second for both (best of three, alternating) and
their ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache.teacher import CachedTeacher  # noqa: E402
from providers.base import Message, TeacherRequest, TeacherSample  # noqa: E402


class Instant:
    spec = "bench:instant"

    def identity(self) -> dict:
        return {"provider": "bench", "model": "instant"}

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        return [TeacherSample(text=f"{request.prefix} {i} " + "word " * 40, model="instant", teacher=self.spec)
                for i in range(request.n)]

    async def aclose(self) -> None:
        return None


def run(path: Path, lease_s: float | None, steps: int, forks: int, n: int) -> float:
    teacher = CachedTeacher(Instant(), path, lease_s=lease_s)

    async def go() -> None:
        for step in range(steps):
            reqs = [TeacherRequest((Message("user", "q"),), f"step {step} fork {i}", n=n, max_tokens=64) for i in range(forks)]
            await asyncio.gather(*(teacher.sample(r) for r in reqs))

    t0 = time.perf_counter()
    asyncio.run(go())
    teacher.close()
    return steps * forks / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--forks", type=int, default=80)
    ap.add_argument("--n", type=int, default=10)
    a = ap.parse_args()
    best = {"off": 0.0, "on": 0.0}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(3):  # alternate, best of three each: the first run also warms imports and caches
            for name, lease in (("off", None), ("on", 60.0)):
                best[name] = max(best[name], run(Path(d) / f"{name}{rep}.sqlite", lease, a.steps, a.forks, a.n))
    off, on = best["off"], best["on"]
    print(f"misses/s, {a.forks} concurrent forks x {a.n} samples, instant teacher: leases off {off:,.0f}, "
          f"leases on {on:,.0f} (ratio on/off {on / off:.2f})")


if __name__ == "__main__":
    main()
