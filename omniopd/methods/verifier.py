"""Binary verifiers for SG-OPD and the verifier gate: (completion text, reference) -> verdict.

A verifier is any callable `(completion: str, gold: str | None) -> bool | None`; None means
"cannot judge" (no reference answer), which the methods treat as no signal. The default,
`math_verifier`, compares final answers with math-verify through `omniopd.answers` (the
evaluation's extractor, so training and evaluation judge answers the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from omniopd.errors import ConfigError

Verifier = Callable[[str, "str | None"], "bool | None"]


def math_verifier(completion: str, gold: str | None) -> bool | None:
    """Final-answer match by math-verify (`omniopd.answers.is_correct`); None without a reference."""
    if gold is None or not str(gold).strip():
        return None
    try:
        from omniopd.answers import is_correct
    except ModuleNotFoundError as exc:  # the evaluation module ships with `omniopd eval`
        raise ConfigError(f"--verifier math needs omniopd.answers (math-verify answer extraction): {exc}") from exc
    return bool(is_correct(completion, str(gold)))


VERIFIERS: dict[str, Verifier] = {"math": math_verifier}


def verdicts_B(verifier: Verifier, completions: Sequence[str], golds: Sequence[str | None]) -> torch.Tensor:
    """Float (B,): 1 correct, 0 wrong, NaN where the verifier has no verdict."""
    out = []
    for text, gold in zip(completions, golds):
        v = verifier(text, gold)
        out.append(float("nan") if v is None else float(bool(v)))
    return torch.tensor(out, dtype=torch.float32)
