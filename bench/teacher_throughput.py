"""Teacher throughput and billing against the fake wire server (tests/fake_providers.py).

    PYTHONPATH=. python bench/teacher_throughput.py [--requests 200] [--rpm 600] [--latency 0.2]

Part 1 — rate limiting. Every answer takes `--latency` seconds; the client is limited to
`--rpm` requests/min and `--concurrency` in flight per (provider, model). It fires
`--requests` one-sample requests at once (anthropic:claude-haiku-4-5: one sample per request)
and reports achieved samples/s as a fraction of the limit, with and without 10 % injected 429s
(`retry-after-ms: 100`), and the samples lost (requested - returned). Baseline in the same run:
one request at a time (what a client without concurrency achieves at this latency).

Part 2 — billed input tokens per sample for N = 10 samples of one prefix: OpenAI `n=10` in one
request vs ten requests; Gemini `candidate_count` (8 + 2); Anthropic with prompt caching (one
cache write, nine reads) vs without, as USD per sample at the table's prices.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omniopd.config import TeacherConfig  # noqa: E402
from omniopd.teachers import build_api_teacher  # noqa: E402
from providers.base import Message, TeacherRequest  # noqa: E402
from providers.limits import LimitsRegistry  # noqa: E402
from tests.fake_providers import FakeProviderServer  # noqa: E402

PROMPT = (Message("user", "Tom has 3 apples and buys 4 more. How many apples does he have?"),)


async def _fire(teacher, requests: int) -> tuple[int, float]:
    req = TeacherRequest(PROMPT, "Tom starts with", n=1, max_tokens=16)
    t0 = time.monotonic()
    results = await asyncio.gather(*(teacher.sample(req) for _ in range(requests)), return_exceptions=True)
    wall = time.monotonic() - t0
    await teacher.aclose()
    return sum(len(r) for r in results if isinstance(r, list)), wall


def rate_run(latency: float, rate_429: float, rpm: float, concurrency: int, requests: int) -> dict:
    with FakeProviderServer(latency_s=latency, rate_429=rate_429, retry_after_ms=100, seed=1) as srv:
        cfg = TeacherConfig(spec="claude-haiku", rpm=rpm, concurrency=concurrency, max_attempts=20)
        teacher = build_api_teacher(cfg, env=srv.env(), limits=LimitsRegistry())
        got, wall = asyncio.run(_fire(teacher, requests))
        n429 = sum(r.status == 429 for r in srv.requests())
        ok = sorted(r.t for r in srv.requests() if r.status == 200)
    rate = got / wall
    # The bucket starts full (one second's worth): the steady rate is measured after that burst.
    burst = int(rpm / 60.0)
    steady = (len(ok) - burst - 1) / (ok[-1] - ok[burst]) if len(ok) > burst + 1 and ok[-1] > ok[burst] else rate
    return {"samples": got, "lost": requests - got, "wall_s": wall, "samples_per_s": rate,
            "fraction_of_limit": rate / (rpm / 60.0), "steady_fraction": steady / (rpm / 60.0),
            "injected_429": n429, "retries": teacher.usage_totals()["retries"]}


async def _n_samples(teacher, prefix: str, messages=PROMPT, n: int = 10) -> list:
    try:
        return await teacher.sample(TeacherRequest(messages, prefix, n=n, max_tokens=16))
    finally:
        await teacher.aclose()


def billing(srv: FakeProviderServer) -> list[tuple[str, float, float]]:
    """(label, per-sample value with the cheap path, per-sample value of the baseline)."""
    env, out = srv.env(), []
    for spec, label in (("openai:gpt-4o-mini", "OpenAI n=10 vs 10 requests"),
                        ("gemini:gemini-2.5-flash", "Gemini candidate_count vs 10 requests")):
        cheap = asyncio.run(_n_samples(build_api_teacher(TeacherConfig(spec=spec), env=env, limits=LimitsRegistry()), "Tom starts with"))
        base = asyncio.run(_n_samples(build_api_teacher(TeacherConfig(spec=spec, max_n=1), env=env, limits=LimitsRegistry()), "Tom starts with"))
        out.append((label + " (input tokens/sample)", statistics.fmean(s.input_tokens for s in cheap),
                    statistics.fmean(s.input_tokens for s in base)))
    long_msgs = (Message("user", "Read the passage, then answer. " + "The farmer counts apples in the orchard. " * 500),)
    cached_t = build_api_teacher(TeacherConfig(spec="claude-haiku"), env=env, limits=LimitsRegistry())
    plain_t = build_api_teacher(TeacherConfig(spec="claude-haiku"), env=env, limits=LimitsRegistry())
    plain_t.caps = dataclasses.replace(plain_t.caps, min_cache_tokens=None)
    cached = asyncio.run(_n_samples(cached_t, "He counts", long_msgs))
    plain = asyncio.run(_n_samples(plain_t, "He counts again", long_msgs))
    out.append(("Anthropic cache_control vs none (USD/sample, ~5.3k-token prompt)",
                statistics.fmean(s.cost_usd for s in cached), statistics.fmean(s.cost_usd for s in plain)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rpm", type=float, default=600.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args(argv)

    print(f"# rate limiting: {args.requests} one-sample requests, limit {args.rpm:g} rpm "
          f"({args.rpm / 60:g}/s), concurrency {args.concurrency}, latency {args.latency * 1000:g} ms")
    base = rate_run(args.latency, 0.0, args.rpm, 1, max(10, args.requests // 10))
    clean = rate_run(args.latency, 0.0, args.rpm, args.concurrency, args.requests)
    faulty = rate_run(args.latency, 0.10, args.rpm, args.concurrency, args.requests)
    for name, r in (("baseline: 1 in flight", base), ("no 429s", clean), ("10% injected 429s", faulty)):
        print(f"{name:24s} {r['samples_per_s']:6.2f} samples/s = {r['fraction_of_limit']:.3f} of the limit "
              f"(steady state after the 1 s burst: {r['steady_fraction']:.3f}); "
              f"lost {r['lost']}, 429s {r['injected_429']}, retries {r['retries']}, wall {r['wall_s']:.1f} s")
    print(f"ratio (10% 429s vs baseline) = {faulty['samples_per_s'] / base['samples_per_s']:.2f}x")

    print("\n# billed input per sample, N = 10 samples of one prefix")
    with FakeProviderServer() as srv:
        for label, cheap, baseline in billing(srv):
            print(f"{label:66s} {cheap:10.6g} vs {baseline:10.6g}  ratio {cheap / baseline:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
