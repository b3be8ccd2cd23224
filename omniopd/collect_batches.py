"""Submitting, polling and storing provider batches, under the spend cap, resumably.

`BatchCollector` drives one provider's `BatchClient` (providers/batch_base.py) with three
records that survive any crash:

- the **spend ledger** (`omniopd/ledger.py`): a batch's worst case, at the batch price, is
  reserved before it is submitted, under the owner `batch:<job>` (no process death makes it
  `lost`: the batch runs on at the provider), and settled once from the reported usage;
- the **batch journal** (`cache/batch_jobs.py`): the job and its items are written before the
  create call, the batch id right after it; a rerun polls the same batches, never resubmits;
- the **sample cache**: results are stored under the items' keys with uids derived from (batch,
  item, index), so storing again after a crash adds nothing.

Order of one submission: reserve -> journal `planned` -> journal `submitting` -> create ->
journal `submitted`. The create call is attempted once; after a timeout, 429 or 5xx the batch is
looked for at the provider by its tag (`BatchClient.find`) before another attempt. Resume:
`planned` jobs were never sent (reservation released, job dropped); `submitting` jobs are looked
for the same way (found: polled; not found: counted at their worst case, items planned again,
a warning); `submitted` jobs are polled. A chunk whose worst case would pass the cap is split to what fits;
what does not fit is refused, and `refused` says by how much it would have passed the cap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from cache.batch_jobs import BatchJournal, Job, JobItem, request_to_json
from cache.store import Entry, SampleStore
from omniopd.collect_plan import PlannedItem
from omniopd.errors import TeacherAuthError, TeacherCapabilityError, TeacherError, TeacherQuotaError
from omniopd.ledger import SpendLedger
from providers.batch_base import BATCH_DISCOUNT, BatchClient, BatchItem, BatchStatus, sample_uid

log = logging.getLogger("omniopd")

OWNER_PREFIX = "batch:"


@dataclass
class Refusal:
    """Items the cap left unbought: their worst case, the headroom there was, and the excess."""

    items: int
    worst_usd: float
    headroom_usd: float

    @property
    def over_usd(self) -> float:
        return self.worst_usd - self.headroom_usd

    def message(self, cap: float | None) -> str:
        return (f"{self.items} requests were not submitted: their worst case ${self.worst_usd:.6f} at the batch price would "
                f"pass --max-teacher-usd {cap:g} by ${self.over_usd:.6f} (headroom ${self.headroom_usd:.6f}); raise the cap "
                "and rerun to buy them (nothing bought is bought again)")


@dataclass
class BatchCollector:
    """See the module docstring. `echo` prints one progress line."""

    client: BatchClient
    journal: BatchJournal
    ledger: SpendLedger
    store: SampleStore
    poll_s: float = 60.0
    max_items: int | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
    echo: Callable[[str], None] = print
    _last: dict[str, str] = field(default_factory=dict)

    # --- resume ---------------------------------------------------------------------------------
    async def recover(self) -> None:
        """Settle what a killed run left (see the module docstring)."""
        for job in self.journal.jobs(["planned"]):
            if job.reservation is not None:
                self.ledger.release(job.reservation)
            self.journal.drop_job(job.job)
        known_ids = {j.batch_id for j in self.journal.jobs() if j.batch_id}
        for job in self.journal.jobs(["submitting"]):
            batch_id = await self.client.find(job.job, len(self.journal.items(job.job)), job.created, known_ids)
            if batch_id is not None:  # it reached the provider: poll it like any other
                self.journal.set_state(job.job, "submitted", batch_id)
                known_ids.add(batch_id)
                self.echo(f"batch {batch_id}: found at the provider (a run was killed while submitting it); polling it")
                continue
            if job.reservation is not None:
                self.ledger.settle(job.reservation, job.worst_usd, 0)
            self.journal.finish(job.job, [], paid_usd=job.worst_usd, live_usd=0.0, input_tokens=0.0, output_tokens=0.0,
                                state="lost")
            log.warning("batch job %s: a run was killed while submitting it and the provider lists no such batch; "
                        "counted at its worst case $%.6f, its requests are planned again", job.job, job.worst_usd)
        known = self.journal.known_reservations()
        for rid in self.ledger.open_reservations(OWNER_PREFIX):
            if rid not in known:  # reserved, then killed before the job was written: never sent
                self.ledger.release(rid)

    # --- submit ----------------------------------------------------------------------------------
    async def submit(self, planned: Sequence[PlannedItem]) -> Refusal | None:
        """Submit `planned` in chunks of the provider's size, each reserved first (see the module docstring)."""
        rest = list(planned)
        while rest:
            chunk, rest = self._chunk(rest)
            worst = [self.client.worst_case_usd(p.item) for p in chunk]
            headroom = self.ledger.headroom()
            if headroom is not None and sum(worst) > headroom:
                fit, total = 0, 0.0
                while fit < len(chunk) and total + worst[fit] <= headroom:
                    total += worst[fit]
                    fit += 1
                left = chunk[fit:] + rest
                refusal = Refusal(len(left), sum(worst[fit:]) + sum(self.client.worst_case_usd(p.item) for p in rest),
                                  max(0.0, headroom - total))
                if fit:
                    await self._submit_one(chunk[:fit], worst[:fit])
                return refusal
            await self._submit_one(chunk, worst)
        return None

    def _chunk(self, planned: list[PlannedItem]) -> tuple[list[PlannedItem], list[PlannedItem]]:
        """The next batch: at most the provider's (or --batch-items) requests, and at most 80% of
        its size limit (a request's JSON, twice over for the SDK's wrapping and the answer's room)."""
        size = min(self.client.max_items, self.max_items or self.client.max_items)
        budget, used, n = 0.8 * self.client.max_bytes, 0, 0
        while n < min(size, len(planned)):
            cost = 2 * len(request_to_json(planned[n].item.request)) + 256
            if n and used + cost > budget:
                break
            used, n = used + cost, n + 1
        return planned[:n], planned[n:]

    async def _submit_one(self, chunk: Sequence[PlannedItem], worst: Sequence[float]) -> None:
        job = uuid.uuid4().hex[:16]
        # custom ids are unique within a batch; renumber so a split chunk stays dense
        items = [JobItem(f"i{j}", p.key, p.item.request, p.item.k) for j, p in enumerate(chunk)]
        rid = self.ledger.reserve(sum(worst), f"{self.client.spec} batch of {len(items)}", owner=OWNER_PREFIX + job)
        self.journal.add_job(job, self.client.provider, self.client.spec, items, sum(worst), rid)
        self.journal.set_state(job, "submitting")
        batch_id = await self._create(job, items)
        if batch_id is None:
            return
        self.journal.set_state(job, "submitted", batch_id)
        self.echo(f"batch {batch_id} ({self.client.spec}): submitted {len(items)} requests, "
                  f"{sum(it.k for it in items)} samples; worst case ${sum(worst):.6f} reserved")

    async def _create(self, job: str, items: Sequence[JobItem]) -> str | None:
        """The create call, retried only once `find` says the failed attempt created nothing.

        A refusal (auth, quota, a 4xx) created nothing: the reservation is released, the job
        dropped, the error raised. A timeout, 429 or 5xx may have come after the provider
        created the batch: it is looked for by its tag before the next attempt, so a batch is
        never created (nor paid for) twice.
        """
        policy = self.client.policy
        attempts = policy.max_attempts
        since = self.clock()
        known = {j.batch_id for j in self.journal.jobs() if j.batch_id}
        for attempt in range(1, attempts + 1):
            try:
                return await self.client.create([_batch_item(it) for it in items], tag=job)
            except (TeacherAuthError, TeacherQuotaError, TeacherCapabilityError):
                self._drop(job)
                raise
            except TeacherError as exc:
                found = await self.client.find(job, len(items), since, known)
                if found is not None:
                    log.info("batch %s: the create call failed (%s) after the provider created it", found, exc.status)
                    return found
                if attempt == attempts:
                    self._drop(job)
                    raise
                await self.sleep(max(exc.retry_after_s or 0.0, policy.backoff(attempt)))
        return None

    def _drop(self, job: str) -> None:
        """A job the provider never created: its reservation released, its record gone."""
        rid = next((j.reservation for j in self.journal.jobs(["submitting"]) if j.job == job), None)
        if rid is not None:
            self.ledger.release(rid)
        self.journal.set_state(job, "planned")
        self.journal.drop_job(job)

    # --- poll ----------------------------------------------------------------------------------------
    async def wait(self, max_wait_s: float | None = None) -> bool:
        """Poll every submitted batch until all ended and are stored; False when `max_wait_s` ran out."""
        start = self.clock()
        while True:
            open_jobs = self.journal.jobs(["submitted"])
            for job in open_jobs:
                st = await self.client.status(job.batch_id)  # type: ignore[arg-type]
                self.journal.record_status(job.job, st.raw, {**st.counts, "done": st.done, "total": st.total})
                self._progress(job, st)
                if st.ended:
                    await self.finish(job, st.raw)
            if not self.journal.jobs(["submitted"]):
                return True
            if max_wait_s is not None and self.clock() - start >= max_wait_s:
                left = self.journal.jobs(["submitted"])
                self.echo(f"{len(left)} batches still running ({', '.join(j.batch_id or '?' for j in left)}); "
                          "rerun the same command to collect them (nothing is resubmitted)")
                return False
            await self.sleep(self.poll_s)

    async def cancel_open(self) -> None:
        """Ask the provider to stop every submitted batch; `wait` then stores what they finished."""
        for job in self.journal.jobs(["submitted"]):
            await self.client.cancel(job.batch_id)  # type: ignore[arg-type]
            self.echo(f"batch {job.batch_id}: cancel requested")

    async def finish(self, job: Job, raw: str = "ended") -> None:
        """Store an ended batch's samples, record each item's outcome, settle its reservation."""
        items = self.journal.items(job.job)
        by_id = {it.custom_id: it for it in items}
        results = await self.client.results(job.batch_id, [_batch_item(it) for it in items])  # type: ignore[arg-type]
        now = self.clock()
        entries = [Entry(by_id[r.custom_id].key, sample_uid(job.batch_id, r.custom_id, i), now,  # type: ignore[arg-type]
                         dataclasses.replace(s, cached=False, cache_id=None))
                   for r in results for i, s in enumerate(r.samples)]
        self.store.put_many(entries)
        paid = sum(r.cost_usd for r in results)
        tin, tout = sum(r.input_tokens for r in results), sum(r.output_tokens for r in results)
        outcomes = [(r.custom_id, "stored" if r.status == "succeeded" else r.status, r.error, r.request_id) for r in results]
        if job.reservation is not None:
            self.ledger.settle(job.reservation, paid, len(entries))
        self.journal.finish(job.job, outcomes, paid_usd=paid, live_usd=paid / BATCH_DISCOUNT, input_tokens=tin,
                            output_tokens=tout)
        bad = [r for r in results if r.status != "succeeded"]
        line = (f"batch {job.batch_id}: ended{'' if raw == 'ended' else f' ({raw})'}; {len(results) - len(bad)} of {len(results)} "
                f"requests stored ({len(entries)} samples); paid ${paid:.6f} (live ${paid / BATCH_DISCOUNT:.6f})")
        if bad:
            kinds: dict[str, int] = {}
            for r in bad:
                kinds[r.status] = kinds.get(r.status, 0) + 1
            line += "; " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
            first = next((r for r in bad if r.error), None)
            if first is not None:
                line += f" (e.g. {first.custom_id}: {first.error}" + (f", request {first.request_id})" if first.request_id else ")")
        self.echo(line)

    def _progress(self, job: Job, st: BatchStatus) -> None:
        text = f"{st.raw}" + (f" {st.done}/{st.total}" if st.total else "")
        if self._last.get(job.job) == text:
            return
        self._last[job.job] = text
        eta = ""
        if st.total and 0 < st.done < st.total:
            elapsed = max(1e-9, self.clock() - job.created)
            eta = f", ETA {_duration((st.total - st.done) * elapsed / st.done)}"
        self.echo(f"batch {job.batch_id}: {text}{eta}")


def _batch_item(it: JobItem) -> BatchItem:
    return BatchItem(it.custom_id, it.request, it.k)


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"

