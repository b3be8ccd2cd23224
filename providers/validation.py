"""What counts as a teacher sample: the one check every client's answers pass through.

A text comes back from an API (or a local model) before it becomes a `TeacherSample`; it is
rejected — counted as a failed sample, never stored, never scored — when:

- it is empty or missing (no content blocks, `content: null`, no parts, a blocked candidate):
  an empty string is not a continuation, and storing it would pin an empty sample in the
  cache pool for good;
- it is longer than the request allows: more output tokens than `max_tokens` per sample (as
  the server reports them; for a call that returned k samples, more than k x `max_tokens`), or
  more than `MAX_BYTES_PER_TOKEN` x `max_tokens` bytes of UTF-8. The byte bound needs no
  tokenizer and holds for any real tokenizer's output (English averages ~4 bytes per token,
  code indentation runs ~16; no vocabulary reaches 64 on average over a chunk), so only a
  server that ignores the bound (or an attacker's proxy) trips it.

The functions are pure; `ApiTeacher` and `LocalTeacher` call them on every text.
"""

from __future__ import annotations

MAX_BYTES_PER_TOKEN = 64


def rejection(text: str | None, max_tokens: int) -> str | None:
    """Why a single text is not a sample (None: it is one)."""
    if text is None or text == "":
        return "empty or missing text"
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES_PER_TOKEN * max_tokens:
        return f"{size} bytes for a {max_tokens}-token bound (over {MAX_BYTES_PER_TOKEN} bytes per token)"
    return None


def call_rejection(output_tokens: float, samples: int, max_tokens: int) -> str | None:
    """Why a whole call's answers are not samples: it reports more output than it may produce."""
    if samples and output_tokens > samples * max_tokens:
        return f"{output_tokens:g} output tokens reported for {samples} sample(s) of at most {max_tokens} tokens"
    return None
