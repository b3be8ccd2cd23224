"""USD per teacher solution, bought through the batch APIs over bought live, for the three price cards.

    PYTHONPATH=. python bench/batch_cost.py [--solutions 4] [--answer-words 180]

For each provider's default solution teacher (claude-haiku-4-5, gpt-4o-mini, gemini-2.5-flash)
it runs `omniopd collect --what solutions` twice on the packaged demo prompts (24 GSM8K-style
questions) — live against tests/fake_providers.py and `--batch` against tests/fake_batches.py,
both answering every request with the same `--answer-words`-word solution, so the two runs are
billed for the same tokens — and prints USD per stored solution each way (from the spend
ledger and the sample cache, i.e. through the code that bills real runs) and their ratio.
Target: <= 0.55.

Price source: the capability table's live price card (`providers/capabilities.py`, copied
2026-11-01) and the batch discount `providers.batch_base.BATCH_DISCOUNT` = 0.5, from the
providers' pages: Anthropic batch-processing#pricing ("50% of standard API prices"), OpenAI
guides/batch ("50% discount"), Gemini batch-mode ("50% of the standard cost").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omniopd.collect import run_collect  # noqa: E402
from omniopd.config import CollectConfig, build_config  # noqa: E402
from omniopd.ledger import LEDGER_FILE, SpendLedger  # noqa: E402
from tests.fake_batches import FakeBatchServer  # noqa: E402
from tests.fake_providers import FakeProviderServer  # noqa: E402

SPECS = {"anthropic": "anthropic:claude-haiku-4-5", "openai": "openai:gpt-4o-mini", "gemini": "gemini:gemini-2.5-flash"}


async def _fast(_: float) -> None:
    await asyncio.sleep(0)


def usd_per_solution(spec: str, batch: bool, solutions: int, text: str, work: Path) -> tuple[float, int]:
    cfg = build_config(None, {"teacher.spec": spec, "data.path": "demo", "cache.path": str(work / "cache.sqlite"),
                              "student.max_new_tokens": 400, "method.teacher_solutions": solutions})
    ccfg = CollectConfig(dir=str(work / "collect"), batch=batch, poll_s=0.01)
    server = FakeBatchServer(responder=lambda *_: text) if batch else FakeProviderServer(responder=lambda *_: text)
    with server as srv:
        run_collect(cfg, ccfg, env=srv.env(), sleep=_fast, echo=lambda _: None)
    with SpendLedger(work / "collect" / LEDGER_FILE) as ledger:
        return ledger.spent / max(1, ledger.samples), ledger.samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--solutions", type=int, default=4, help="solutions per prompt")
    ap.add_argument("--answer-words", type=int, default=180, help="words (= output tokens) per fake solution")
    args = ap.parse_args(argv)
    text = " ".join(["step"] * (args.answer_words - 1) + ["72"])
    print(f"USD per teacher solution, {args.solutions} per prompt, 24 demo prompts, {args.answer_words}-token answers")
    print(f"{'teacher':32} {'live':>12} {'batched':>12} {'batched/live':>13}")
    worst = 0.0
    for provider, spec in SPECS.items():
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            live, n_live = usd_per_solution(spec, False, args.solutions, text, Path(a))
            batched, n_batch = usd_per_solution(spec, True, args.solutions, text, Path(b))
        assert n_live == n_batch == 24 * args.solutions, (n_live, n_batch)
        ratio = batched / live
        worst = max(worst, ratio)
        print(f"{spec:32} {live:12.8f} {batched:12.8f} {ratio:13.3f}")
    print(f"worst ratio {worst:.3f} (target <= 0.55): {'met' if worst <= 0.55 else 'NOT met'}")
    return 0 if worst <= 0.55 else 1


if __name__ == "__main__":
    raise SystemExit(main())
