"""`omniopd collect`: buy teacher text for a dataset ahead of training, live or at half price.

`--what solutions`: `--teacher-solutions` whole teacher answers per prompt, requested exactly as
`--method sft` requests them (`omniopd.solutions.solution_request` with `max_tokens =
--max-new-tokens` and `temperature = --teacher-temperature`; the flags are the same),
stored in the sample cache under the same keys: a later `omniopd train` finds them with no live
request. Only the shortfall is bought (`omniopd/collect_plan.py`).

- live (default): through `CachedTeacher(BudgetedTeacher(teacher))`, i.e. the path a training
  run takes — each request reserves its worst case in the spend ledger first;
- `--batch`: through the provider's batch API (`omniopd/collect_batches.py`): reserved at the
  batch price, journalled, resumable; items that errored, expired or were canceled are bought
  again in a new batch (`--batch-retries` rounds) or live (`--live-fallback`).

The spend ledger and the batch journal live in `--collect-dir`; a rerun with the same one
resumes (kill -9 included) and pays for nothing twice. `--dry-run` prints the plan and its
estimated cost, live and batched, and buys nothing. API keys come from the environment only
and are never logged or stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omniopd.config import CollectConfig, TrainConfig
from omniopd.errors import BudgetExceededError, ConfigError
from omniopd.solutions import sample_each

log = logging.getLogger("omniopd")


@dataclass
class Row:
    """One line of the summary table: a batch, or the live purchases."""

    name: str
    state: str
    requests: int
    stored: int
    failed: int
    input_tokens: float
    output_tokens: float
    live_usd: float
    paid_usd: float


@dataclass
class CollectSummary:
    prompts: int = 0
    wanted: int = 0  # samples the plan asked for this run (after what was stored)
    missing: int = 0  # samples still missing at the end
    rows: list[Row] = field(default_factory=list)
    refused: str | None = None
    finished: bool = True
    dry_run: str | None = None

    @property
    def paid_usd(self) -> float:
        return sum(r.paid_usd for r in self.rows)

    @property
    def live_usd(self) -> float:
        return sum(r.live_usd for r in self.rows)

    def table(self) -> str:
        if self.dry_run is not None:
            return self.dry_run
        head = ("batch", "state", "requests", "stored", "failed", "tokens in", "tokens out", "USD live-eq", "USD paid")
        body = [(r.name, r.state, str(r.requests), str(r.stored), str(r.failed), f"{r.input_tokens:.0f}",
                 f"{r.output_tokens:.0f}", f"{r.live_usd:.6f}", f"{r.paid_usd:.6f}") for r in self.rows]
        total = ("total", "", str(sum(r.requests for r in self.rows)), str(sum(r.stored for r in self.rows)),
                 str(sum(r.failed for r in self.rows)), f"{sum(r.input_tokens for r in self.rows):.0f}",
                 f"{sum(r.output_tokens for r in self.rows):.0f}", f"{self.live_usd:.6f}", f"{self.paid_usd:.6f}")
        rows = [head, *body, total]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        tail = f"{self.prompts} prompts; {self.missing} samples still missing"
        if self.live_usd > 0:
            tail += f"; paid {self.paid_usd / self.live_usd:.0%} of the live price"
        if not self.finished:
            tail += "; batches still running: rerun to collect them"
        return "\n".join([*lines, tail] + ([self.refused] if self.refused else []))


def load_rows(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The rows of `--data` (`prompt`, `answer`), as `omniopd train` reads them (with `--system-prompt`)."""
    from omniopd.data import load_prompts

    d = cfg.data
    return load_prompts(d.path, d.prompt_field, d.answer_field, d.split, d.limit, cfg.student.system_prompt,
                        config=d.config, max_row_bytes=d.max_row_bytes)


def run_collect(cfg: TrainConfig, ccfg: CollectConfig, *, env: Mapping[str, str] | None = None,
                clock: Callable[[], float] = time.time, sleep: Callable[[float], Awaitable[object]] | None = None,
                echo: Callable[[str], None] = print) -> CollectSummary:
    """See the module docstring. `clock`/`sleep` pace the polls (tests inject fast ones)."""
    return asyncio.run(_collect(cfg, ccfg, env=env, clock=clock, sleep=sleep or asyncio.sleep, echo=echo))


async def _collect(cfg: TrainConfig, ccfg: CollectConfig, *, env: Mapping[str, str] | None, clock: Callable[[], float],
                   sleep: Callable[[float], Awaitable[object]], echo: Callable[[str], None]) -> CollectSummary:
    from cache.batch_jobs import JOURNAL_FILE, BatchJournal
    from cache.paths import resolve_cache_path
    from cache.store import SampleStore
    from omniopd.collect_plan import estimate, request_wants, solution_wants
    from omniopd.ledger import LEDGER_FILE, SpendLedger
    from omniopd.teachers import build_api_teacher, is_api_spec

    if cfg.cache.mode != "read-write":
        raise ConfigError(f"--cache-mode {cfg.cache.mode}: collect stores what it buys; use --cache-mode read-write")
    if cfg.cache.replay is not None:
        raise ConfigError("--replay: collect buys from a teacher; it does not replay a run")
    if not is_api_spec(cfg.teacher.spec):
        raise ConfigError(f"--teacher {cfg.teacher.spec}: collect buys from an API teacher (claude-haiku, anthropic:M, "
                          "openai:M, gemini:M, openai-compatible:M); a local teacher costs nothing to run during training")
    rows = load_rows(cfg)
    prompts = [r["prompt"] for r in rows]
    # The API teacher, as training builds it (its identity is the cache key's), with no fallback:
    # a missing key or an unsupported model stops here, before anything is submitted.
    teacher = build_api_teacher(cfg.teacher, env=env)
    caps = teacher.caps  # type: ignore[attr-defined]
    if cfg.teacher.max_usd is not None and not caps.priced:
        raise ConfigError(f"--max-teacher-usd: {teacher.spec} has no price in the capability table, so no cap can hold; "
                          "drop the cap or choose a priced model")
    client = None
    if ccfg.batch:
        from providers.batch_base import batch_client_for

        client = batch_client_for(teacher)
    out = Path(ccfg.dir).expanduser()
    journal = BatchJournal(out / JOURNAL_FILE, clock=clock, exclusive=True)  # one collect per directory
    opened: list[Any] = [journal]
    try:
        store = SampleStore(resolve_cache_path(cfg.cache.path), "read-write", clock=clock)
        opened.append(store)
        ledger = SpendLedger(out / LEDGER_FILE, cfg.teacher.max_usd, clock=clock)
    except BaseException:
        for f in opened:
            f.close()
        raise
    summary = CollectSummary(prompts=len(prompts))
    # --method sft's request: --teacher-solutions answers of --max-new-tokens at --teacher-temperature
    n, max_tokens, temperature = cfg.method.teacher_solutions, cfg.student.max_new_tokens, cfg.teacher.temperature
    identity = teacher.identity()

    def stored(keys: Any) -> dict[bytes, int]:
        return {k: len(p) for k, p in store.pools(keys).items()}

    fork_reqs: list = []

    def plan() -> list:
        if ccfg.what == "forks":
            return request_wants(fork_reqs, identity, stored=stored, in_flight=journal.in_flight())
        return solution_wants(prompts, identity, n=n, max_tokens=max_tokens, temperature=temperature, stored=stored,
                              in_flight=journal.in_flight())

    try:
        if ccfg.only_failures:  # the student's verdicts first (recorded once: a rerun buys for the same prompts)
            from omniopd.collect_failures import failing_prompts

            prompts = failing_prompts(cfg, rows, out, echo)
        if ccfg.what == "forks":  # the student's rollouts first (recorded once), then their fork requests
            from omniopd.collect_forks import fork_requests_for, forks_dir, record_rollouts

            record_rollouts(cfg, prompts, forks_dir(ccfg.dir), teacher.spec, identity, store, echo)
            fork_reqs = fork_requests_for(cfg, forks_dir(ccfg.dir))
            echo(f"forks: {len(fork_reqs)} fork requests over the recorded rollouts")
        collector = None
        if client is not None:
            from omniopd.collect_batches import BatchCollector

            collector = BatchCollector(client, journal, ledger, store, poll_s=ccfg.poll_s, max_items=ccfg.batch_items,
                                       clock=clock, sleep=sleep, echo=echo)
            if not ccfg.dry_run:
                await collector.recover()
        wants = plan()
        summary.wanted = sum(w.missing for w in wants)
        if ccfg.dry_run:
            est = estimate(wants, caps, teacher._max_n, teacher.worst_case_usd)  # type: ignore[attr-defined]
            summary.dry_run = _dry_run_text(teacher.spec, len(prompts), n, est, journal.in_flight(), ledger)
            return summary
        if collector is not None:
            summary.finished = await _batch_rounds(collector, ccfg, plan, teacher, echo, summary)
        if (ccfg.live_fallback and summary.refused is None) or client is None:  # the cap stopped batches: not live either
            wants = plan() if summary.finished else []
            if wants:
                await _buy_live(teacher, wants, store, ledger, ccfg, n, max_tokens, temperature, summary, echo)
        summary.rows = _job_rows(journal) + summary.rows
        summary.missing = sum(w.missing for w in plan()) if summary.finished else summary.wanted
        if ccfg.what == "forks" and summary.finished:
            from omniopd.collect_forks import record_fork_samples

            answered = record_fork_samples(cfg, forks_dir(ccfg.dir), identity, store)
            echo(f"forks: {answered} of {len(fork_reqs)} forks have teacher continuations; train on them offline with "
                 f"`omniopd train --replay {forks_dir(ccfg.dir)}` and the same student, data and scheduler flags")
        return summary
    finally:
        journal.close()
        ledger.close()
        store.close()
        await teacher.aclose()


async def _batch_rounds(collector: Any, ccfg: CollectConfig, plan: Callable[[], list], teacher: Any,
                        echo: Callable[[str], None], summary: CollectSummary) -> bool:
    """Resume open batches, then submit what is missing, at most 1 + `--batch-retries` rounds."""
    from omniopd.collect_plan import batch_items

    if ccfg.cancel:
        await collector.cancel_open()
        return await collector.wait(ccfg.max_wait_s)
    if not await collector.wait(ccfg.max_wait_s):
        return False
    for round_ in range(1 + ccfg.retries):
        wants = plan()
        if not wants or (round_ > 0 and ccfg.live_fallback):
            return True
        per_item = 1 if teacher.provider == "anthropic" else max(1, teacher._max_n)
        refusal = await collector.submit(batch_items(wants, per_item))
        if refusal is not None:
            summary.refused = refusal.message(collector.ledger.cap_usd)
            echo(summary.refused)
        if not await collector.wait(ccfg.max_wait_s):
            return False
        if refusal is not None:
            return True
    return True


async def _buy_live(teacher: Any, wants: list, store: Any, ledger: Any, ccfg: CollectConfig, n: int, max_tokens: int,
                    temperature: float | None, summary: CollectSummary, echo: Callable[[str], None]) -> None:
    """Buy the shortfall live, through the cache and the ledger (the training path)."""
    from cache.teacher import CachedTeacher
    from omniopd.solutions import buy_solutions, solution_summary
    from omniopd.spend import BudgetedTeacher

    echo(f"live: buying {sum(w.missing for w in wants)} samples for {len(wants)} requests from {teacher.spec}")
    cached = CachedTeacher(BudgetedTeacher(teacher, ledger), store.path, "read-write")
    before = teacher.usage_totals()
    try:
        if ccfg.what == "solutions":
            got = await buy_solutions(cached, [w.prompt for w in wants], n=n, max_tokens=max_tokens, temperature=temperature)
        else:
            got = await sample_each(cached, [w.request for w in wants])
    except BudgetExceededError as exc:
        summary.refused = str(exc)
        echo(summary.refused)
        got = []
    finally:
        await asyncio.to_thread(cached.close)
    after = teacher.usage_totals()
    s = solution_summary(got) if got else {"samples": 0, "cached": 0}
    paid = after["cost_usd"] - before["cost_usd"]
    summary.rows.append(Row("live", "done", int(after["requests"] - before["requests"]), s["samples"] - s["cached"],
                            sum(1 for row in got if not row), after["input_tokens"] - before["input_tokens"],
                            after["output_tokens"] - before["output_tokens"], paid, paid))


def _job_rows(journal: Any) -> list[Row]:
    rows = []
    for j in journal.jobs():
        if j.state == "planned":
            continue
        items = journal.items(j.job)
        stored = sum(1 for it in items if it.state == "stored")
        failed = sum(1 for it in items if it.state not in ("stored", "pending"))
        state = j.state if j.state != "done" else (j.raw_status or "ended")
        fates = {it.state for it in items}
        if j.state == "done" and len(fates) == 1 and fates <= {"canceled", "expired"}:
            state = fates.pop()  # Anthropic says "ended" whatever happened: name what did
        rows.append(Row(j.batch_id or j.job, state, len(items), stored, failed, j.input_tokens, j.output_tokens,
                        j.live_usd, j.paid_usd))
    return rows


def _dry_run_text(spec: str, prompts: int, n: int, est: Any, in_flight: dict, ledger: Any) -> str:
    lines = [f"dry run: nothing is bought. Teacher {spec}; {prompts} prompts, {n} solutions each.",
             f"to buy: {est.samples} samples for {est.prompts} prompts ({est.requests_live} requests)"
             + (f"; {sum(in_flight.values())} samples already in submitted batches" if in_flight else ""),
             f"estimated cost live:    ${est.live_usd:.6f}",
             f"estimated cost batched: ${est.batch_usd:.6f} (the batch price: half the live price card)",
             f"worst case batched:     ${est.worst_batch_usd:.6f} (what the spend ledger reserves before submitting)"]
    if ledger.cap_usd is not None:
        lines.append(f"--max-teacher-usd {ledger.cap_usd:g}: ${ledger.spent:.6f} spent, ${ledger.headroom():.6f} headroom")
    return "\n".join(lines)
