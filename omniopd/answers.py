"""Math answers: extract the final answer from free text and compare it with a reference.

Extraction and comparison are math-verify's (`parse` turns text into SymPy, `verify` compares
numerically and symbolically, so `0.75`, `3/4` and `\\frac{3}{4}` agree). What this module adds
is the order in which the answer is looked for, because a model's completion often keeps
talking after it has answered:

1. `\\boxed{...}` anywhere (the last one wins: the final answer of a chain of thought);
2. GSM8K's `#### answer` line (the first one: a model that answers and then invents a new
   problem has already given its answer);
3. otherwise math-verify on the whole text: its "the answer is X" anchors first, then the last
   number (currency signs, thousands separators and trailing units are handled there).

A reference answer (`gold`) is read the same way, so a raw GSM8K solution ("... #### 18") and a
bare "18" are both fine. No answer found means wrong, never an error.
"""

from __future__ import annotations

import re
from functools import lru_cache
from math import comb

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

_HASHES = re.compile(r"####\s*([^\n]*)")
_BOXED = "\\boxed{"


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` with balanced braces, or None."""
    start = text.rfind(_BOXED)
    while start != -1:
        i, depth = start + len(_BOXED), 1
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start + len(_BOXED): i - 1]
        start = text.rfind(_BOXED, 0, start)
    return None


def answer_span(text: str) -> str | None:
    """The piece of `text` that holds its final answer, before any parsing (see module doc)."""
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return "$" + boxed.strip() + "$"
    m = _HASHES.search(text)
    if m and m.group(1).strip():
        return m.group(1).strip()
    return text if text.strip() else None


@lru_cache(maxsize=65536)
def _parse(span: str) -> tuple:
    parsed = parse(span, extraction_config=(LatexExtractionConfig(), ExprExtractionConfig()))
    return tuple(parsed)


def parse_answer(text: str) -> tuple:
    """math-verify's parse of the final answer: (sympy value, matched string) or () if none."""
    span = answer_span(text)
    return () if span is None else _parse(span)


def extract_answer(text: str) -> str | None:
    """The final answer as the string math-verify matched (e.g. '18', '\\frac{3}{4}'), or None."""
    parsed = parse_answer(text)
    if not parsed:
        return None
    return str(parsed[-1]) if len(parsed) > 1 else str(parsed[0])


def is_correct(prediction: str, gold: str) -> bool:
    """Does the completion's final answer equal the reference answer (math-verify's verify)?"""
    gold_parsed = parse_answer(gold)
    pred_parsed = parse_answer(prediction)
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(verify(list(gold_parsed), list(pred_parsed)))
    except Exception:  # math-verify raises on exotic SymPy objects: treat as no match
        return False


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    (Chen et al. 2021.) Needs n >= k; with c = 0 it is 0, with n - c < k it is 1.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if k < 1 or k > n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
