"""Prefix hygiene and the instruction wrapper: pure text functions shared by every API client.

APIs reject (Anthropic: "final assistant content cannot end with trailing whitespace") or
silently trim a prefill that ends in whitespace, so a prefix is sent stripped and the
continuation is reconciled with the stripped tail: the caller always gets text that continues
the prefix it asked about, character for character.

Models that will not continue a trailing assistant turn get the instruction wrapper: the
partial answer goes in a user turn with "continue exactly", and an echoed copy of the partial
answer at the start of the reply is cut off. Those samples are approximate (`exact=False`).
"""

from __future__ import annotations

from dataclasses import dataclass

from providers.base import Message

INSTRUCTION = (
    "Below is the beginning of your answer to the conversation above. It stops in the middle. "
    "Continue it exactly from where it stops: write only the text that comes next, without "
    "repeating any of it, without quotes or commentary.\n\n<partial_answer>\n{prefix}\n</partial_answer>"
)
EMPTY_INSTRUCTION = "Answer the conversation above. Write only the answer."


@dataclass(frozen=True)
class SplitPrefix:
    """`sent` is what goes over the wire; `tail` is the trailing whitespace held back."""

    sent: str
    tail: str


def split_prefix(prefix: str) -> SplitPrefix:
    sent = prefix.rstrip()
    return SplitPrefix(sent, prefix[len(sent):])


def reconcile(tail: str, continuation: str) -> str:
    """The continuation of `sent + tail`, given the model's continuation of `sent`.

    If the model produced the held-back whitespace (or more), the overlap is removed; if it
    produced other whitespace, that whitespace is dropped (the caller's prefix already has
    its own); if it produced none, the text is returned as is.
    """
    if not tail:
        return continuation
    if continuation.startswith(tail):
        return continuation[len(tail):]
    return continuation.lstrip(" \t\r\n") if continuation[:1].isspace() else continuation


def instruction_messages(messages: tuple[Message, ...], sent_prefix: str) -> tuple[Message, ...]:
    """The conversation plus one user turn holding the partial answer (instruct mode)."""
    text = INSTRUCTION.format(prefix=sent_prefix) if sent_prefix else EMPTY_INSTRUCTION
    return tuple(messages) + (Message("user", text),)


def strip_echo(sent_prefix: str, reply: str, min_overlap: int = 12) -> str:
    """Cut a repeated copy of the partial answer off the start of an instruct-mode reply.

    Handles a full echo, an echo wrapped in the `<partial_answer>` tags, and an echo of only
    the prefix's last part (at least `min_overlap` characters, or the whole prefix if shorter).
    """
    r = reply
    for tag in ("<partial_answer>", "</partial_answer>"):
        if r.lstrip().startswith(tag):
            r = r.lstrip()[len(tag):].lstrip("\n")
    if not sent_prefix:
        return r
    if r.startswith(sent_prefix):
        return r[len(sent_prefix):]
    # longest suffix of the prefix that the reply starts with
    limit = min(len(sent_prefix), len(r))
    for k in range(limit, 0, -1):
        if k < min(min_overlap, len(sent_prefix)):
            break
        if r.startswith(sent_prefix[-k:]):
            return r[k:]
    return reply if r is reply else r
