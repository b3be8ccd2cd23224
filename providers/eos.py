"""Which token ids end a turn, for a transformers model and its tokenizer.

Here, below `omniopd/`, because the in-process teacher (`providers/local.py`) needs it and
`providers/` imports nothing from `omniopd` but its errors; `omniopd.models` re-exports it.
"""

from __future__ import annotations


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a turn: the generation config's (one or a list) and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
