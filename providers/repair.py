"""First-error minimal repair: the teacher rewrites only the student's first wrong step.

SCoRe, PERsD, "Minimum Change" (arXiv 2402.11192) and LEMA train a student on a teacher's
correction of the student's own failed attempt rather than on a whole teacher solution: the student
keeps its correct prefix, in its own wording, and learns only the step where it went wrong and what
follows from it. This module is the wire half of that recipe, for any teacher:

- `repair_request` builds an ordinary `TeacherRequest` (no prefix): the prompt's turns up to its
  last user turn, which is replaced by `REPAIR_PROMPT` — the problem, the student's solution as
  numbered lines, and a strict answer format. Being an ordinary request, it goes through every
  teacher (the sample cache, the spend ledger and cap, retries, fallback) unchanged.
- `parse_repair` validates the answer against the student's solution and returns a `Repair`: the
  student's own text before the first wrong line (verbatim, cut from the solution itself, never
  copied back from the teacher) and the teacher's corrected text from that line on. An answer that
  breaks the format raises `RepairFormatError` (a `TeacherResponseError`) for that sample only.

A "line" is one non-blank line of the student's solution; blank lines are kept in the prefix but
not numbered, so the numbers the teacher sees are the steps it can name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from omniopd.errors import RepairFormatError
from providers.base import Message, TeacherRequest

REPAIR_PROMPT = """\
Below is a problem and a student's solution to it, one numbered line per step. The solution's \
final answer is wrong.

Problem:
{problem}

Student's solution:
{numbered}

Find the first line that is wrong. Rewrite the solution from that line on: correct that line, \
changing as few words as you can and keeping the student's wording and style, then continue to \
the final answer the way the student writes. Do not repeat the lines before it, do not number \
your lines, and add no commentary.

Answer in exactly this format:
STEP <number of the first wrong line>
<the corrected line and every line after it, up to and including the final answer>"""
"""The repair instruction, filled with `problem` (the prompt's last user turn) and `numbered`.

Why this shape: the correction must stay close to the student's own distribution (Minimum Change:
targets in the student's wording are learned with far less forgetting than a teacher's restyled
solution), so the teacher is told to change as few words as it can and to continue in the
student's style. Numbered lines make "the first wrong step" a number the teacher can name and we
can check — the prefix the student keeps is then cut from its own text, not trusted to the
teacher's echo. The `STEP <k>` header on the first line makes the answer machine-checkable in every
API (no JSON mode, no tool calls: Claude, GPT, Gemini and local servers all follow it), and "do not
repeat the lines before it" is what saves output tokens against a whole solution. The lab's run 6
teacher restarted whole solutions instead, and a small student could not use restarts.
"""

LINE_MARK = "[{k}] "
"""How a student line is numbered for the teacher: `[3] text` (not `3.`, which students write themselves)."""

_HEADER = re.compile(r"^[*_#\s]*STEP[\s#:]*(\d+)[*_\s]*(?:[:.)\-][*_\s]*(.*))?$", re.IGNORECASE)
_ECHOED_MARK = re.compile(r"^\[\d+\]\s?")


@dataclass(frozen=True)
class Repair:
    """A validated repair of one student solution.

    `step_index` is the 0-based index of the first wrong line among the student's numbered lines
    (the teacher named line `step_index + 1`); `prefix_text` is the student's own text before that
    line, verbatim (empty when the first line is wrong); `corrected_text` is the teacher's
    replacement from that line to the final answer. `prefix_text + corrected_text` is the repaired
    solution.
    """

    step_index: int
    prefix_text: str
    corrected_text: str


def solution_lines(solution: str) -> list[tuple[int, str]]:
    """The student's numbered lines: (offset of the line's start in `solution`, the line without
    its newline and trailing spaces), blank lines skipped."""
    out, offset = [], 0
    for line in solution.splitlines(keepends=True):
        if line.strip():
            out.append((offset, line.rstrip()))
        offset += len(line)
    return out


def numbered_solution(solution: str) -> str:
    """The solution as the teacher sees it: one `[k] line` per numbered line."""
    return "\n".join(LINE_MARK.format(k=k) + text for k, (_, text) in enumerate(solution_lines(solution), start=1))


def repair_request(messages: Sequence[Message], student_solution: str, *, max_tokens: int,
                   temperature: float | None = None) -> TeacherRequest:
    """The request asking the teacher to rewrite the first wrong line of `student_solution`.

    `messages` is the prompt the student answered: its turns before the last user turn (a system
    prompt, few-shot turns) are kept, and the last user turn becomes `REPAIR_PROMPT` around it.
    Raises ValueError when there is no user turn or the solution has no non-blank line (nothing to
    repair: the caller buys a whole solution instead).
    """
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise ValueError("repair_request: the prompt has no user turn to show the teacher")
    if not solution_lines(student_solution):
        raise ValueError("repair_request: the student's solution has no non-blank line to repair")
    last = users[-1]
    ask = REPAIR_PROMPT.format(problem=messages[last].content, numbered=numbered_solution(student_solution))
    return TeacherRequest(messages=tuple(messages[:last]) + (Message("user", ask),), prefix="", n=1,
                          max_tokens=max_tokens, temperature=temperature)


def parse_repair(text: str, student_solution: str, *, provider: str | None = None) -> Repair:
    """The teacher's answer to `repair_request(…, student_solution, …)`, validated.

    Accepts `STEP <k>` alone on the first non-blank line (case, a colon and markdown emphasis
    tolerated; a corrected line may follow the header on the same line), a code fence around the
    whole answer, and `[k] ` marks the teacher echoed at the start of its lines. Raises
    `RepairFormatError` (facts: `what`, `step`, `lines`, `provider`) when the header is missing,
    k is not one of the student's lines, the correction is empty, or it repeats the student's own
    lines from k on unchanged.
    """
    lines = solution_lines(student_solution)
    n = len(lines)
    body = text.strip()
    if body.startswith("```"):  # a fenced answer: drop the fence lines
        body = re.sub(r"^```[^\n]*\n?", "", body)
        body = re.sub(r"\n?```\s*$", "", body).strip()
    head, _, rest = body.partition("\n")
    m = _HEADER.match(head.strip())
    if m is None:
        raise RepairFormatError(f"repair answer does not start with 'STEP <k>' (got {head[:60]!r}); "
                                "the sample is dropped", what="header", lines=n, provider=provider)
    k = int(m.group(1))
    if not 1 <= k <= n:
        raise RepairFormatError(f"repair answer names STEP {k}, but the student's solution has {n} lines; "
                                "the sample is dropped", what="step", step=k, lines=n, provider=provider)
    first = (m.group(2) or "").strip()
    corrected = [_ECHOED_MARK.sub("", ln) for ln in ([first] if first else []) + rest.split("\n")]
    corrected_text = "\n".join(corrected).strip("\n").rstrip()
    if not corrected_text.strip():
        raise RepairFormatError(f"repair answer names STEP {k} but gives no corrected text; the sample is dropped",
                                what="empty", step=k, lines=n, provider=provider)
    offset = lines[k - 1][0]
    if corrected_text.strip() == student_solution[offset:].strip():
        raise RepairFormatError(f"repair answer for STEP {k} repeats the student's own lines unchanged; "
                                "the sample is dropped", what="unchanged", step=k, lines=n, provider=provider)
    return Repair(step_index=k - 1, prefix_text=student_solution[:offset], corrected_text=corrected_text)
