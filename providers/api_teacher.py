"""The shared machinery of every API teacher: plan calls, limit, retry, reconcile, account.

A subclass implements one wire protocol in `_call(request, sent_prefix, k)`, returning a
`CallResult` (raw texts and the call's billed usage); this base class does the rest:

1. strip the prefix's trailing whitespace (`providers/continuation.py`);
2. split N into calls of at most `caps.max_n` samples (OpenAI `n`, Gemini `candidate_count`);
   when prompt caching applies (`_warm_cache_first`), the first call runs alone so the
   others read the cache it wrote;
3. run each call under the (provider, model) limits and the retry policy;
4. check every answer (`providers/validation.py`: empty or missing text, more output than the
   request allows are not samples), reconcile each text with the held-back whitespace, strip
   instruct-mode echoes, and split the call's usage and cost evenly across its answers (the
   share of a rejected answer is billed all the same: it stays in the totals and on the bill).

A call that fails past its retries drops its samples (the scorer uses N_eff), and so does a
rejected answer (counted in `failed_samples`); when every call fails the error propagates, and
when no answer at all passes the check a `TeacherResponseError` is raised (the fallback wrapper
decides what happens next). Auth, quota and capability errors propagate at once. The SDK client
is created lazily on the event loop of the first call and closed by `aclose`; a process runs one
event loop (omniopd/event_loop.py), so a teacher used from a second loop is a programming error
and says so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omniopd.errors import (TeacherAuthError, TeacherCapabilityError, TeacherError, TeacherQuotaError,
                            TeacherResponseError)
from providers.base import TeacherRequest, TeacherSample, stable_hash
from providers.capabilities import ModelCaps
from providers.continuation import SplitPrefix, instruction_messages, reconcile, split_prefix, strip_echo
from providers.limits import Limits
from providers.retry import Failure, RetryPolicy, call_with_retries, redact
from providers.usage import UsageTotals, charge, prompt_tokens_upper_bound
from providers.validation import call_rejection, rejection

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("omniopd.providers")

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "STOP": "stop", "MAX_TOKENS": "length"}


@dataclass
class CallResult:
    """One API call's answer: texts with finish reasons, and its billed usage (whole call)."""

    texts: list[tuple[str, str]]
    input_tokens: float = 0.0  # uncached prompt tokens
    output_tokens: float = 0.0
    cache_read_tokens: float = 0.0
    cache_write_tokens: float = 0.0
    model: str = ""
    request_id: str = ""  # the provider's id of the response, for messages
    answer_tokens: float | None = None  # output tokens bounded by max_tokens, when not output_tokens (Gemini)


class ApiTeacher:
    """Base class of the API teachers (see the module docstring)."""

    provider: str = ""
    default_base_url: str = ""
    api_version: str = ""

    def __init__(self, model: str, *, caps: ModelCaps, api_key: str | None, base_url: str | None,
                 timeout_s: float, policy: RetryPolicy, limits: Limits, spec: str | None = None,
                 http_client: "httpx.AsyncClient | None" = None) -> None:
        """Everything comes in as an argument: clients read no environment and no config.

        `http_client`, when given, is the `httpx.AsyncClient` every SDK call goes through
        (proxies, custom TLS, a shared connection pool); it is the caller's to close, and it
        must be used on one event loop (the pipeline's).
        """
        self.model = model
        self.http_client = http_client
        self.caps = caps
        self.spec = spec or f"{self.provider}:{model}"
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.policy = policy
        self.limits = limits
        self._api_key = api_key
        self._sdk: Any = None  # the SDK client, made on the first call's event loop
        self._sdk_loop: Any = None
        self._totals = UsageTotals()
        self._max_n = caps.max_n  # lowered to 1 if the server answers n > 1 with one choice
        self._n_ignored = False
        self._rejected: dict[int, str] = {}  # id(request) -> why answers were rejected (for the error)

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}(spec={self.spec!r}, continuation={self.caps.continuation!r})"

    # --- the Teacher protocol --------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "endpoint": (self.base_url or self.default_base_url).rstrip("/"),
            "model": self.model,
            "api_version": self.api_version,
            "continuation": self.caps.continuation,
            "thinking": self.caps.thinking,
            "template": self._template_hash(),
        }

    def usage_totals(self) -> dict[str, float]:
        return self._totals.as_dict()

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        split = split_prefix(request.prefix)
        per = self._max_n
        sizes = [min(per, request.n - i) for i in range(0, request.n, per)]
        results: list[list[TeacherSample] | BaseException] = []
        if len(sizes) > 1 and self._warm_cache_first(request, split):
            results.append(await self._guarded(request, split, sizes[0]))
            sizes = sizes[1:]
        results += await asyncio.gather(*(self._guarded(request, split, k) for k in sizes))
        samples = [s for r in results if isinstance(r, list) for s in r]
        errors = [r for r in results if isinstance(r, BaseException)]
        _raise_actionable(errors)
        short = request.n - len(samples)
        if short > 0 and self._n_ignored and per > 1 and not self.caps.priced:
            # The server answers n > 1 with one choice (llama-cpp-python): ask one at a time.
            log.warning("%s: the server ignores n (asked %d, got 1); requesting one sample per call from now on", self.spec, per)
            self._max_n = 1
            more = await asyncio.gather(*(self._guarded(request, split, 1) for _ in range(short)))
            samples += [s for r in more if isinstance(r, list) for s in r]
            errors += [r for r in more if isinstance(r, BaseException)]
            _raise_actionable(errors)
        rejected = self._rejected.pop(id(request), None)
        if errors and not samples:
            raise errors[0]
        if not samples:
            self._totals.failed_samples += request.n
            raise TeacherResponseError(
                f"{self.spec}: no usable answer among {request.n} ({rejected}); nothing was stored. If this repeats, "
                "the server does not honour the request's bounds: check --teacher-base-url or choose another --teacher",
                provider=self.provider)
        if len(samples) < request.n:
            self._totals.failed_samples += request.n - len(samples)
            log.warning("%s: %d of %d samples failed (%s); continuing with %d", self.spec, request.n - len(samples),
                        request.n, errors[0] if errors else rejected, len(samples))
        self._totals.add_samples(samples)
        return samples

    def worst_case_usd(self, request: TeacherRequest) -> float:
        """The most `sample(request)` can be billed: what the spend ledger reserves before it.

        Every call bills the whole prompt (bounded by `prompt_tokens_upper_bound` over what is
        sent, the instruction wrapper included) at the dearest input rate (cache writes cost
        1.25x on Anthropic), and every sample at most `max_tokens` output tokens (thinking and
        reasoning tokens count toward that bound on Gemini and OpenAI). N samples take
        ceil(N / max_n) calls; the one-at-a-time retry for servers that ignore `n` runs only
        for unpriced (self-hosted) teachers, so it never adds cost.
        """
        caps = self.caps
        if not caps.priced:
            return 0.0
        split = split_prefix(request.prefix)
        convo = request.messages
        if caps.continuation == "instruct":
            convo = instruction_messages(convo, split.sent)
        texts = [m.content for m in convo] + ([split.sent] if caps.continuation != "instruct" else [])
        prompt = prompt_tokens_upper_bound(texts, len(convo) + 1)
        calls = -(-request.n // max(1, self._max_n))
        rate_in = max(r for r in (caps.usd_per_mtok_in, caps.usd_per_mtok_cache_write, caps.usd_per_mtok_cache_read)
                      if r is not None)
        return (calls * prompt * rate_in + request.n * request.max_tokens * caps.usd_per_mtok_out) / 1e6  # type: ignore[operator]

    async def aclose(self) -> None:
        sdk, self._sdk = self._sdk, None
        if self.http_client is not None:  # the caller's: closing an SDK client would close it
            return
        if sdk is not None and self._sdk_loop is asyncio.get_running_loop():
            await self._close_client(sdk)

    # --- for subclasses ----------------------------------------------------------------------
    async def _call(self, request: TeacherRequest, split: SplitPrefix, k: int) -> CallResult:
        raise NotImplementedError

    def _make_client(self) -> Any:
        raise NotImplementedError

    async def _close_client(self, client: Any) -> None:
        await client.close()

    def _warm_cache_first(self, request: TeacherRequest, split: SplitPrefix) -> bool:
        return False

    def _template_hash(self) -> str | None:
        return None

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._sdk is None:
            self._sdk, self._sdk_loop = self._make_client(), loop
        elif self._sdk_loop is not loop:
            raise RuntimeError(f"{self.spec}: this teacher's client belongs to another event loop; run every teacher "
                               "call of a process on its one loop (omniopd.event_loop.process_loop())")
        return self._sdk

    def _temperature(self, request: TeacherRequest) -> dict[str, float]:
        """Sampling parameters to send: none unless the table says the model takes them."""
        if not self.caps.accepts_temperature:
            return {}
        out = {}
        if request.temperature is not None:
            out["temperature"] = request.temperature
        if request.top_p is not None:
            out["top_p"] = request.top_p
        return out

    # --- internals -----------------------------------------------------------------------------
    async def _guarded(self, request: TeacherRequest, split: SplitPrefix, k: int) -> list[TeacherSample] | BaseException:
        try:
            return await self._one_call(request, split, k)
        except TeacherError as exc:
            return exc

    async def _one_call(self, request: TeacherRequest, split: SplitPrefix, k: int) -> list[TeacherSample]:
        est = (sum(len(m.content) for m in request.messages) + len(request.prefix)) / 4 + k * request.max_tokens

        def on_retry(f: Failure, wait_s: float) -> None:
            self._totals.retries += 1
            log.info("%s: %s; retrying in %.2f s", self.spec, redact(f.message, [self._api_key])[:200], wait_s)

        async with self.limits.admit(est):
            t0 = self.policy.clock()

            async def attempt() -> CallResult:
                self._totals.requests += 1
                return await self._call(request, split, k)

            res = await call_with_retries(attempt, self.policy, what=self.spec, secrets=[self._api_key], on_retry=on_retry)
            latency = self.policy.clock() - t0
        if k > 1 and len(res.texts) == 1:
            self._n_ignored = True
        return self._to_samples(res, split, latency, request)

    def _to_samples(self, res: CallResult, split: SplitPrefix, latency: float, request: TeacherRequest) -> list[TeacherSample]:
        cost = self.caps.cost_usd(res.input_tokens, res.output_tokens, res.cache_read_tokens, res.cache_write_tokens)
        charge(cost)
        m = max(1, len(res.texts))
        bounded = res.output_tokens if res.answer_tokens is None else res.answer_tokens
        whole = call_rejection(bounded, len(res.texts), request.max_tokens)
        out = []
        for text, finish in res.texts or [(None, "")]:
            why = whole or rejection(text, request.max_tokens)
            if why is not None:  # billed all the same: its share stays in the totals, on no sample
                self._totals.input_tokens += res.input_tokens / m
                self._totals.output_tokens += res.output_tokens / m
                self._totals.cost_usd += cost / m
                self._rejected[id(request)] = why + (f", response {res.request_id}" if res.request_id else "")
                log.warning("%s: an answer was rejected (%s); it is not a sample", self.spec, self._rejected[id(request)])
                continue
            if self.caps.continuation == "instruct":
                text = strip_echo(split.sent, text)
            text = reconcile(split.tail, text)
            if not text:  # only an echo of the prefix, or only the held-back whitespace
                self._totals.cost_usd += cost / m
                self._rejected[id(request)] = "the answer only repeated the prefix"
                continue
            out.append(TeacherSample(
                text=text,
                finish_reason=FINISH.get(finish, finish.lower() if finish else "stop"),
                input_tokens=res.input_tokens / m,
                output_tokens=res.output_tokens / m,
                cache_read_tokens=res.cache_read_tokens / m,
                cache_write_tokens=res.cache_write_tokens / m,
                cost_usd=cost / m,
                model=res.model or self.model,
                teacher=self.spec,
                latency_s=latency,
                exact=self.caps.exact,
                extra={"continuation": self.caps.continuation},
            ))
        return out


def _raise_actionable(errors: list[BaseException]) -> None:
    """Auth, quota and capability errors need the user: no partial result may hide them."""
    for e in errors:
        if isinstance(e, (TeacherAuthError, TeacherQuotaError, TeacherCapabilityError)):
            raise e


def template_hash(template: str | None) -> str | None:
    return stable_hash(template)[:16] if template else None
