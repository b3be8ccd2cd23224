"""Seeded multi-step arithmetic word problems with exact answers and worked solutions.

Each problem comes from one of several templates (two or three arithmetic steps: +, -, x and
exact division), a name, an item and numbers drawn from small ranges, so a tiny model can learn
the arithmetic facts involved. Texts are lowercase with every word, number and punctuation mark
separated by one space: the lab's word-level tokenizer then round-trips text exactly, which the
provider interface needs (the teacher continues the student's prefix as text).

`make_splits(seed, n_train, n_test)` returns disjoint train and held-out lists: a problem is
identified by its question text, and no held-out question appears in the training split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

NAMES = ["tom", "ana", "sam", "lia", "ben", "mia", "max", "zoe", "leo", "eva", "kai", "ida"]
ITEMS = ["apples", "pens", "cards", "books", "shells", "coins", "stamps", "eggs", "cups", "balls"]


@dataclass(frozen=True)
class Problem:
    question: str
    solution: str  # step-by-step, ending with "#### N"
    answer: int
    template: str

    def row(self) -> dict:
        """The JSONL row omniopd reads: question text and reference answer."""
        return {"question": self.question, "answer": str(self.answer)}


def _t_buy_give(r: random.Random) -> Problem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 15), r.randint(2, 9)
    c = r.randint(1, min(9, a + b - 1))
    s1, s2 = a + b, a + b - c
    q = f"{n} has {a} {it} . {n} buys {b} more {it} and then gives {c} away . how many {it} does {n} have now ?"
    s = f"{n} starts with {a} {it} . after buying {b} more , {n} has {a} + {b} = {s1} . after giving {c} away , {n} has {s1} - {c} = {s2} . #### {s2}"
    return Problem(q, s, s2, "buy_give")


def _t_boxes_eat(r: random.Random) -> Problem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 9), r.randint(2, 9)
    c = r.randint(1, min(9, a * b - 1))
    s1, s2 = a * b, a * b - c
    q = f"{n} buys {a} boxes of {it} . each box holds {b} {it} . {n} uses {c} of them . how many {it} are left ?"
    s = f"{a} boxes with {b} {it} each make {a} * {b} = {s1} {it} . after using {c} , {s1} - {c} = {s2} are left . #### {s2}"
    return Problem(q, s, s2, "boxes_eat")


def _t_times_together(r: random.Random) -> Problem:
    n, m = r.sample(NAMES, 2)
    it = r.choice(ITEMS)
    a, b = r.randint(2, 12), r.randint(2, 6)
    s1, s2 = a * b, a + a * b
    q = f"{n} has {a} {it} . {m} has {b} times as many {it} as {n} . how many {it} do they have together ?"
    s = f"{m} has {b} * {a} = {s1} {it} . together they have {a} + {s1} = {s2} {it} . #### {s2}"
    return Problem(q, s, s2, "times_together")


def _t_earn_spend(r: random.Random) -> Problem:
    n = r.choice(NAMES)
    a, b = r.randint(2, 9), r.randint(2, 9)
    c = r.randint(1, min(9, a * b - 1))
    s1, s2 = a * b, a * b - c
    q = f"{n} earns {a} dollars a day for {b} days and then spends {c} dollars . how many dollars does {n} have left ?"
    s = f"in {b} days {n} earns {a} * {b} = {s1} dollars . after spending {c} , {n} has {s1} - {c} = {s2} dollars . #### {s2}"
    return Problem(q, s, s2, "earn_spend")


def _t_share_more(r: random.Random) -> Problem:
    it = r.choice(ITEMS)
    b, s1 = r.randint(2, 9), r.randint(2, 9)
    a, c = b * s1, r.randint(1, 9)
    s2 = s1 + c
    q = f"{a} {it} are shared equally among {b} kids . then each kid gets {c} more {it} . how many {it} does each kid have ?"
    s = f"each kid first gets {a} / {b} = {s1} {it} . with {c} more , each kid has {s1} + {c} = {s2} {it} . #### {s2}"
    return Problem(q, s, s2, "share_more")


def _t_packs_lose(r: random.Random) -> Problem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b, c = r.randint(1, 9), r.randint(2, 6), r.randint(2, 9)
    s1, s2 = b * c, a + b * c
    d = r.randint(1, min(9, s2 - 1))
    s3 = s2 - d
    q = f"{n} has {a} {it} and buys {b} packs of {c} {it} . then {n} loses {d} {it} . how many {it} does {n} have ?"
    s = (f"{b} packs of {c} make {b} * {c} = {s1} {it} . with the first {a} , {n} has {a} + {s1} = {s2} . "
         f"after losing {d} , {n} has {s2} - {d} = {s3} {it} . #### {s3}")
    return Problem(q, s, s3, "packs_lose")


TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    "buy_give": _t_buy_give,
    "boxes_eat": _t_boxes_eat,
    "times_together": _t_times_together,
    "earn_spend": _t_earn_spend,
    "share_more": _t_share_more,
    "packs_lose": _t_packs_lose,
}


def generate(rng: random.Random, n: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[Problem]:
    """`n` distinct problems (templates in turn), none whose question is in `exclude`."""
    out: list[Problem] = []
    seen = set(exclude)
    names = list(TEMPLATES)
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct problems; the templates' space is too small")
        p = TEMPLATES[names[len(out) % len(names)]](rng)
        if p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def make_splits(seed: int, n_train: int, n_test: int) -> tuple[list[Problem], list[Problem]]:
    """(train, held-out): disjoint by question; the held-out split is drawn first so its
    content does not depend on n_train."""
    rng = random.Random(seed)
    test = generate(rng, n_test)
    train = generate(rng, n_train, exclude={p.question for p in test})
    return train, test


def corpus(problems: list[Problem]) -> list[str]:
    """All texts the tokenizer is trained on."""
    return [t for p in problems for t in (p.question, p.solution)]
