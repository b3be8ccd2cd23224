"""What each teacher model can do, as data: one row per model pattern, first match wins.

The teacher clients never branch on model names; they read a `ModelCaps` row:

- `continuation`: how a prefix is continued, best first —
  `raw` (render the chat template locally with `continue_final_message=True` and call
  `/v1/completions`: token-exact), `continue_final` (OpenAI-compatible chat with
  `continue_final_message: true, add_generation_prompt: false`: vLLM, SGLang, llama.cpp's own
  server), `prefill` (a trailing assistant/model turn: Claude Haiku 4.5, Gemini 2.5 with
  thinking off), `instruct` (the partial answer in a user turn, "continue exactly"; echoed
  prefixes stripped; samples marked approximate: OpenAI chat models, Claude >= 4.6, Gemini 3).
- `max_n`: samples one request can return (OpenAI `n`, Gemini `candidate_count`); 1 means
  N samples cost N requests (Anthropic: then prompt caching makes the repeats cheap).
- `accepts_temperature`: whether sampling parameters may be sent at all. Current Anthropic API
  versions and OpenAI reasoning models reject them, so the default is to send none.
- `thinking`: `none` (send nothing), `budget0` (Gemini 2.5: `thinkingBudget: 0`, required for a
  trailing model turn to be continued), `low` (Gemini 3: `thinkingLevel: low`; its thinking
  tokens are billed as output), `minimal` (OpenAI reasoning models: `reasoning_effort: minimal`,
  so a short chunk budget is not spent on hidden reasoning).
- `min_cache_tokens`: the shortest prompt the provider will cache (Anthropic `cache_control`);
  None = no explicit caching.
- prices in USD per million tokens (input, output, cache read, cache write) and the date they
  were copied from the provider's price page. A price of None means unknown: cost is reported
  as 0 and `priced` is False (self-hosted servers cost nothing per token).
- `default_rpm`: the client-side requests/min limit when `--teacher-rpm` is unset: roughly the
  providers' second usage tier. Lower tiers get 429s with `retry-after`, which are honoured;
  set `--teacher-rpm` to your account's limit to avoid them.

Patterns are `fnmatch` globs over the model name within a provider; dated snapshots
(`claude-haiku-4-5-20251001`) match their family's row. Unknown models get the provider's
conservative default row (instruct wrapper, n=1, no sampling parameters, no prices).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from typing import Literal

Continuation = Literal["raw", "continue_final", "prefill", "instruct"]
Thinking = Literal["none", "budget0", "low", "minimal"]
CONTINUATIONS: tuple[str, ...] = ("raw", "continue_final", "prefill", "instruct")

PRICES_DATE = "2026-11-01"


@dataclass(frozen=True)
class ModelCaps:
    """One row of the capability table (see the module docstring for each field)."""

    provider: str
    pattern: str
    continuation: Continuation
    max_n: int = 1
    accepts_temperature: bool = False
    thinking: Thinking = "none"
    min_cache_tokens: int | None = None
    usd_per_mtok_in: float | None = None
    usd_per_mtok_out: float | None = None
    usd_per_mtok_cache_read: float | None = None
    usd_per_mtok_cache_write: float | None = None
    prices_date: str | None = None
    default_rpm: float | None = None

    @property
    def exact(self) -> bool:
        """Whether this mode continues the prefix itself (True) or is asked to (False)."""
        return self.continuation != "instruct"

    @property
    def priced(self) -> bool:
        return self.usd_per_mtok_in is not None and self.usd_per_mtok_out is not None

    def cost_usd(self, input_tokens: float, output_tokens: float, cache_read: float = 0.0, cache_write: float = 0.0) -> float:
        """Cost of one call's usage. `input_tokens` excludes cached reads and writes (the
        Anthropic convention; OpenAI/Gemini callers subtract cached tokens first)."""
        if not self.priced:
            return 0.0
        cr = self.usd_per_mtok_cache_read if self.usd_per_mtok_cache_read is not None else self.usd_per_mtok_in
        cw = self.usd_per_mtok_cache_write if self.usd_per_mtok_cache_write is not None else self.usd_per_mtok_in
        total = input_tokens * self.usd_per_mtok_in + output_tokens * self.usd_per_mtok_out + cache_read * cr + cache_write * cw
        return total / 1e6


def _a(pattern: str, continuation: Continuation, pin: float, pout: float, min_cache: int) -> ModelCaps:
    # Anthropic: cache reads 0.1x input, 5-minute cache writes 1.25x input.
    return ModelCaps("anthropic", pattern, continuation, max_n=1, accepts_temperature=False, min_cache_tokens=min_cache,
                     usd_per_mtok_in=pin, usd_per_mtok_out=pout, usd_per_mtok_cache_read=round(pin * 0.1, 6),
                     usd_per_mtok_cache_write=round(pin * 1.25, 6), prices_date=PRICES_DATE, default_rpm=1000.0)


def _o(pattern: str, pin: float, pout: float, cached: float, temperature: bool) -> ModelCaps:
    return ModelCaps("openai", pattern, "instruct", max_n=128, accepts_temperature=temperature, min_cache_tokens=1024,
                     thinking="none" if temperature else "minimal",
                     usd_per_mtok_in=pin, usd_per_mtok_out=pout, usd_per_mtok_cache_read=cached,
                     usd_per_mtok_cache_write=pin, prices_date=PRICES_DATE, default_rpm=500.0)


def _g(pattern: str, continuation: Continuation, thinking: Thinking, pin: float, pout: float, cached: float) -> ModelCaps:
    return ModelCaps("gemini", pattern, continuation, max_n=8, accepts_temperature=True, thinking=thinking,
                     min_cache_tokens=1024, usd_per_mtok_in=pin, usd_per_mtok_out=pout, usd_per_mtok_cache_read=cached,
                     usd_per_mtok_cache_write=pin, prices_date=PRICES_DATE, default_rpm=1000.0)


# First match wins: specific rows before families, families before the provider default.
TABLE: tuple[ModelCaps, ...] = (
    # Anthropic. Prefill is accepted up to the 4.5 generation; >= 4.6 answers a trailing
    # assistant turn with a 400, so those models get the instruction wrapper.
    _a("claude-haiku-4-5*", "prefill", 1.0, 5.0, 4096),
    _a("claude-sonnet-4-5*", "prefill", 3.0, 15.0, 1024),
    _a("claude-opus-4-5*", "prefill", 5.0, 25.0, 4096),
    _a("claude-sonnet-4-6*", "instruct", 3.0, 15.0, 2048),
    _a("claude-opus-4-6*", "instruct", 5.0, 25.0, 4096),
    _a("claude-opus-4-7*", "instruct", 5.0, 25.0, 4096),
    _a("claude-haiku-4-6*", "instruct", 1.0, 5.0, 4096),
    ModelCaps("anthropic", "*", "instruct", max_n=1, min_cache_tokens=4096, default_rpm=1000.0),
    # OpenAI chat completions: no assistant continuation, so the instruction wrapper; `n` bills
    # the prompt once. Reasoning models (gpt-5*, o*) accept only the default temperature.
    _o("gpt-4o-mini*", 0.15, 0.60, 0.075, True),
    _o("gpt-4o*", 2.50, 10.0, 1.25, True),
    _o("gpt-4.1-nano*", 0.10, 0.40, 0.025, True),
    _o("gpt-4.1-mini*", 0.40, 1.60, 0.10, True),
    _o("gpt-4.1*", 2.0, 8.0, 0.50, True),
    _o("gpt-5-nano*", 0.05, 0.40, 0.005, False),
    _o("gpt-5-mini*", 0.25, 2.0, 0.025, False),
    _o("gpt-5*", 1.25, 10.0, 0.125, False),
    ModelCaps("openai", "*", "instruct", max_n=128, accepts_temperature=False, default_rpm=500.0),
    # Gemini: 2.5 Flash/Flash-Lite continue a trailing model turn with thinking off;
    # 2.5 Pro cannot turn thinking off and Gemini 3 ignores the trailing turn: instruction wrapper.
    _g("gemini-2.5-flash-lite*", "prefill", "budget0", 0.10, 0.40, 0.01),
    _g("gemini-2.5-flash*", "prefill", "budget0", 0.30, 2.50, 0.03),
    _g("gemini-2.5-pro*", "instruct", "none", 1.25, 10.0, 0.125),
    _g("gemini-3*flash*", "instruct", "low", 0.50, 3.0, 0.05),
    _g("gemini-3*pro*", "instruct", "low", 2.0, 12.0, 0.20),
    ModelCaps("gemini", "*", "instruct", max_n=8, accepts_temperature=True, default_rpm=1000.0),
    # OpenAI-compatible servers (vLLM, SGLang, llama.cpp, llama-cpp-python): nothing is assumed.
    # llama-cpp-python 0.3.36 ignores `continue_final_message` on its chat endpoint and returns
    # one choice for n > 1, so the default is n=1 and the instruction wrapper; with a known
    # chat template (`--teacher-template`) the client switches to `raw` completion.
    ModelCaps("openai-compatible", "*", "instruct", max_n=1, accepts_temperature=True),
)


def lookup(provider: str, model: str, table: tuple[ModelCaps, ...] = TABLE) -> ModelCaps:
    """The first row of `table` whose provider matches and whose pattern matches `model`."""
    for row in table:
        if row.provider == provider and fnmatch.fnmatchcase(model, row.pattern):
            return row
    raise KeyError(f"no capability row for provider {provider!r}")  # every provider has a '*' row


def with_overrides(caps: ModelCaps, *, continuation: str | None = None, max_n: int | None = None) -> ModelCaps:
    """A row with the user's overrides applied (`--teacher-continuation`, `--teacher-max-n`)."""
    changes = {}
    if continuation is not None:
        changes["continuation"] = continuation
    if max_n is not None:
        changes["max_n"] = max_n
    return replace(caps, **changes) if changes else caps
