"""What the lab's teacher calls would cost at an API's list prices: a named price card.

The lab's teacher is an in-process model, so it bills nothing; to compare recipes the way a
user pays for them, every teacher call the lab makes is priced as if it went to a real API.
The prices are not copied here: a `PriceCard` is a row of the project's capability table
(`providers.capabilities`, the same table the API teachers bill by), looked up by name
(`claude-haiku-4-5`: input $1/M, output $5/M, cache reads $0.10/M).

What is billed, per call, as the provider would:

- input: the prompt plus, for a fork-based arm, the student's prefix the teacher continues —
  counted in the lab's tokenizer (the local teacher reports its rendered prompt length per
  sample; every sample is one request, as Claude's n=1 API bills it);
- output: the tokens the teacher generated (its EOS included);
- cache reads: only where the provider would apply prompt caching — Anthropic caches prompts
  of at least `min_cache_tokens` (4,096 for Haiku 4.5); the lab's prompts are < 100 tokens, so
  `cached_input_tokens` is 0 for every lab call and the card says why rather than assuming.

A `Spend` is the running sum of one arm's calls; `usd(card)` prices it. White-box arms (the
teacher scores the student's tokens, no API sells this) price the scored tokens as input
tokens: a lower bound on what a prefill-only call would cost, kept so records always carry a
dollar figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from providers.capabilities import ModelCaps, lookup

DEFAULT_CARD = "claude-haiku-4-5"
# provider of each card name the lab accepts (the model name is looked up in that provider's rows)
_PROVIDERS = {"claude": "anthropic", "gpt": "openai", "gemini": "gemini"}


@dataclass(frozen=True)
class PriceCard:
    """A named row of `providers.capabilities.TABLE`: USD per million tokens."""

    name: str
    caps: ModelCaps

    @property
    def usd_per_mtok_in(self) -> float:
        return float(self.caps.usd_per_mtok_in or 0.0)

    @property
    def usd_per_mtok_out(self) -> float:
        return float(self.caps.usd_per_mtok_out or 0.0)

    def cacheable(self, prompt_tokens: float) -> bool:
        """Whether the provider would cache a prompt this long (then repeats of it are billed as
        cache reads). False for every lab prompt (< 100 tokens against Haiku's 4,096), so the
        lab bills all input at the input price; a lab call that reached it would have to be
        priced with its repeats, which `Spend` does not track."""
        lo = self.caps.min_cache_tokens
        return lo is not None and prompt_tokens >= lo

    def call_usd(self, input_tokens: float, output_tokens: float, cache_read_tokens: float = 0.0) -> float:
        """One call (or a sum of calls): input excludes cache reads (the Anthropic convention)."""
        return self.caps.cost_usd(input_tokens, output_tokens, cache_read_tokens)


def price_card(name: str = DEFAULT_CARD) -> PriceCard:
    """The card of `name` (e.g. `claude-haiku-4-5`); raises ValueError for an unpriced model."""
    provider = next((p for prefix, p in _PROVIDERS.items() if name.startswith(prefix)), None)
    if provider is None:
        raise ValueError(f"no provider for price card {name!r}; known prefixes: {', '.join(_PROVIDERS)}")
    caps = lookup(provider, name)
    if not caps.priced:
        raise ValueError(f"price card {name!r}: the capability table has no prices for it")
    return PriceCard(name, caps)


@dataclass
class Spend:
    """What one arm has bought so far (sums over its teacher calls)."""

    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cache_read_tokens: float = 0.0
    scored_tokens: float = 0.0  # white-box: completion tokens the teacher scored
    calls: int = 0

    def add(self, input_tokens: float, output_tokens: float, calls: int = 1) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.calls += calls

    def plus(self, other: "Spend") -> "Spend":
        return Spend(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens,
                     self.cache_read_tokens + other.cache_read_tokens, self.scored_tokens + other.scored_tokens,
                     self.calls + other.calls)

    @property
    def teacher_tokens(self) -> float:
        """The lab's historical budget unit: output tokens (plus scored tokens, white-box)."""
        return self.output_tokens + self.scored_tokens

    def usd(self, card: PriceCard) -> float:
        return card.call_usd(self.input_tokens + self.scored_tokens, self.output_tokens, self.cache_read_tokens)

    @classmethod
    def of_usage(cls, totals: dict[str, float]) -> "Spend":
        """From a teacher's `usage_totals()` (providers.usage.UsageTotals.as_dict)."""
        return cls(float(totals.get("input_tokens", 0.0)), float(totals.get("output_tokens", 0.0)),
                   float(totals.get("cache_read_tokens", 0.0)), float(totals.get("scored_tokens", 0.0)),
                   int(totals.get("samples", 0)))
