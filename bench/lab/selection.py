"""Which examples a recipe trains on, from the student's own verified samples: pure rules.

- `gate_P`: failure gating (PERsD, BREAD): per problem, buy a teacher solution only when none of
  the student's k samples passes the verifier; where one does, its correct samples are free
  targets (rejection sampling) and the teacher is not asked.
- `negatives_of`: the student's verifier-wrong samples of a problem, paired with the problem's
  preferred answer (the teacher's solution, or the student's own first correct sample).
- `first_wrong_step` / `oracle_repair`: first-error minimal repair with the reference solution
  as the oracle (no teacher): keep the student's own steps up to its first wrong one, replace
  that step and everything after it with the reference's, so the student learns the corrected
  step after its own correct prefix. A step is the text between ` . ` separators (the lab's
  solutions write one computation per step and end with `#### N`); a step is wrong when its
  numbers differ from the reference step's (a copied name or item in other words is the
  student's own wording and is kept — only numbers change an answer), or when it is missing.

The rules are pure (strings and booleans in, strings and indices out) so tests pin them down
with hand-written cases.
"""

from __future__ import annotations

from bench.lab import tasks

SEP = " . "


def gate_P(correct_PK: list[list[bool]]) -> list[bool]:
    """Per problem: True = buy a teacher solution (every one of its k samples failed)."""
    return [not any(row) for row in correct_PK]


def free_targets(samples_K: list[str], correct_K: list[bool]) -> list[str]:
    """The student's distinct correct samples of one problem, in sample order."""
    return list(dict.fromkeys(s for s, ok in zip(samples_K, correct_K) if ok))


def negatives_of(samples_K: list[str], correct_K: list[bool]) -> list[str]:
    """The student's distinct verifier-wrong samples of one problem (empty texts dropped)."""
    return list(dict.fromkeys(s for s, ok in zip(samples_K, correct_K) if not ok and s.strip()))


def steps(solution: str) -> list[str]:
    """A solution's steps: its text split at ` . ` (`a + b = c pens . #### c` -> 2 steps)."""
    text = solution.strip()
    if text.endswith(" ."):
        text = text[:-2]
    return [s for s in text.split(SEP)] if text else []


def _numbers(step: str) -> list[str]:
    return [w for w in step.split(" ") if tasks.is_number(w)]


def first_wrong_step(student: str, reference: str) -> int | None:
    """Index of the student's first step whose numbers differ from the reference's (or that is
    missing, or an extra step past the reference's end); None when every step agrees."""
    s, r = steps(student), steps(reference)
    for i in range(max(len(s), len(r))):
        if i >= len(s) or i >= len(r) or _numbers(s[i]) != _numbers(r[i]):
            return i
    return None


def oracle_repair(student: str, reference: str) -> tuple[str, str] | None:
    """(the student's own correct prefix, the corrected step and the reference's rest), or None
    when the student's solution has no wrong step. The training target is `prefix . rest`;
    `rest` is what a minimally-repairing teacher would have had to write."""
    i = first_wrong_step(student, reference)
    if i is None:
        return None
    s, r = steps(student), steps(reference)
    return SEP.join(s[:i]), SEP.join(r[i:])


def after_restart(solution: str) -> str:
    """The teacher's last attempt: the text after its last restart mark (`tasks.RESTART`, the
    lab teacher's "wait, that is wrong"), or the whole text when it never restarted. The
    teacher still bills the whole text; the student learns only the clean solution."""
    words = solution.split(" ")
    marks = [i for i, w in enumerate(words) if w == tasks.RESTART]
    return " ".join(words[marks[-1] + 1:]) if marks else solution


def join_repair(prefix: str, rest: str) -> str:
    """The repaired solution's text (the student's prefix, then the corrected steps)."""
    return f"{prefix}{SEP}{rest}" if prefix else rest
