"""Seeded task families with exact answers and worked solutions: the lab's problems.

Two families, each a set of templates drawn in turn:

- `arith`: two- or three-step arithmetic word problems (+, -, x, exact division) about a name
  and an item. The solution copies the item name into every step; those copied words do not
  change the answer, only the numbers do.
- `lists`: operations on a short list of digits (pick labelled items, largest minus
  smallest, reverse, sort). The solution copies list items, and every copied token matters:
  copy one wrong and the answer is wrong.

Solutions are short (12-25 tokens) so that rollouts, teacher samples and evaluation are cheap
on a CPU. Texts are lowercase with every word, number and punctuation mark separated by one
space: the lab's word-level tokenizer then round-trips text exactly, which the provider
interface needs (the teacher continues the student's prefix as text). Every solution ends with
`#### N`, N a non-negative integer below 200 (one token).

`make_splits(seed, n_train, n_test, family)` returns disjoint train and held-out lists: a
problem is identified by its question text, and no held-out question appears in the training
split. `corrupt_prefix` makes the imperfect prefixes the teacher learns to repair.
"""

from __future__ import annotations

import random
import re
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


# --- arithmetic word problems -----------------------------------------------------------------
def _t_buy_give(r: random.Random) -> Problem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 15), r.randint(2, 9)
    c = r.randint(1, min(9, a + b - 1))
    s1, s2 = a + b, a + b - c
    q = f"{n} has {a} {it} . {n} buys {b} more {it} and then gives {c} away . how many {it} does {n} have now ?"
    s = f"{n} has {a} + {b} = {s1} {it} . then {s1} - {c} = {s2} {it} . #### {s2}"
    return Problem(q, s, s2, "buy_give")


def _t_boxes_eat(r: random.Random) -> Problem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 9), r.randint(2, 9)
    c = r.randint(1, min(9, a * b - 1))
    s1, s2 = a * b, a * b - c
    q = f"{n} buys {a} boxes of {it} . each box holds {b} {it} . {n} uses {c} of them . how many {it} are left ?"
    s = f"{a} * {b} = {s1} {it} . {s1} - {c} = {s2} {it} are left . #### {s2}"
    return Problem(q, s, s2, "boxes_eat")


def _t_times_together(r: random.Random) -> Problem:
    n, m = r.sample(NAMES, 2)
    it = r.choice(ITEMS)
    a, b = r.randint(2, 12), r.randint(2, 6)
    s1, s2 = a * b, a + a * b
    q = f"{n} has {a} {it} . {m} has {b} times as many {it} as {n} . how many {it} do they have together ?"
    s = f"{m} has {b} * {a} = {s1} {it} . {a} + {s1} = {s2} {it} . #### {s2}"
    return Problem(q, s, s2, "times_together")


def _t_earn_spend(r: random.Random) -> Problem:
    n = r.choice(NAMES)
    a, b = r.randint(2, 9), r.randint(2, 9)
    c = r.randint(1, min(9, a * b - 1))
    s1, s2 = a * b, a * b - c
    q = f"{n} earns {a} dollars a day for {b} days and then spends {c} dollars . how many dollars does {n} have left ?"
    s = f"{n} earns {a} * {b} = {s1} dollars . {s1} - {c} = {s2} dollars . #### {s2}"
    return Problem(q, s, s2, "earn_spend")


def _t_share_more(r: random.Random) -> Problem:
    it = r.choice(ITEMS)
    b, s1 = r.randint(2, 9), r.randint(2, 9)
    a, c = b * s1, r.randint(1, 9)
    s2 = s1 + c
    q = f"{a} {it} are shared equally among {b} kids . then each kid gets {c} more {it} . how many {it} does each kid have ?"
    s = f"{a} / {b} = {s1} {it} . {s1} + {c} = {s2} {it} each . #### {s2}"
    return Problem(q, s, s2, "share_more")


def _t_packs_lose(r: random.Random) -> Problem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b, c = r.randint(1, 9), r.randint(2, 6), r.randint(2, 9)
    s1, s2 = b * c, a + b * c
    d = r.randint(1, min(9, s2 - 1))
    s3 = s2 - d
    q = f"{n} has {a} {it} and buys {b} packs of {c} {it} . then {n} loses {d} {it} . how many {it} does {n} have ?"
    s = f"{b} * {c} = {s1} {it} . {a} + {s1} = {s2} . {s2} - {d} = {s3} {it} . #### {s3}"
    return Problem(q, s, s3, "packs_lose")


TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    "buy_give": _t_buy_give,
    "boxes_eat": _t_boxes_eat,
    "times_together": _t_times_together,
    "earn_spend": _t_earn_spend,
    "share_more": _t_share_more,
    "packs_lose": _t_packs_lose,
}


# --- list operations ----------------------------------------------------------------------------
def _digits(r: random.Random, n: int, distinct: bool = False) -> list[int]:
    return r.sample(range(1, 10), n) if distinct else [r.randint(1, 9) for _ in range(n)]


def _show(xs: list[int]) -> str:
    return " ".join(str(x) for x in xs)


LABELS = ["a", "b", "c", "d", "e", "f"]


def _labelled(xs: list[int]) -> str:
    return " ".join(f"{k} {x}" for k, x in zip(LABELS, xs))


def _l_pick_add(r: random.Random) -> Problem:
    xs = _digits(r, r.choice([5, 6]))
    i, j = r.sample(range(len(xs)), 2)
    s = xs[i] + xs[j]
    q = f"list {_labelled(xs)} . add {LABELS[i]} and {LABELS[j]} ."
    sol = f"{LABELS[i]} is {xs[i]} . {LABELS[j]} is {xs[j]} . {xs[i]} + {xs[j]} = {s} . #### {s}"
    return Problem(q, sol, s, "pick_add")


def _l_pick_mul(r: random.Random) -> Problem:
    xs = _digits(r, r.choice([5, 6]))
    i, j = r.sample(range(len(xs)), 2)
    s = xs[i] * xs[j]
    q = f"list {_labelled(xs)} . multiply {LABELS[i]} by {LABELS[j]} ."
    sol = f"{LABELS[i]} is {xs[i]} . {LABELS[j]} is {xs[j]} . {xs[i]} * {xs[j]} = {s} . #### {s}"
    return Problem(q, sol, s, "pick_mul")


def _l_max_min(r: random.Random) -> Problem:
    xs = _digits(r, r.choice([5, 6]))
    hi, lo = max(xs), min(xs)
    q = f"list {_show(xs)} . largest minus smallest ?"
    sol = f"largest is {hi} . smallest is {lo} . {hi} - {lo} = {hi - lo} . #### {hi - lo}"
    return Problem(q, sol, hi - lo, "max_min")


def _l_reverse_add(r: random.Random) -> Problem:
    xs = _digits(r, 5)
    ys = xs[::-1]
    s = ys[0] + ys[1] + ys[2]
    q = f"list {_show(xs)} . reverse it and add the first three ."
    sol = f"reversed {_show(ys)} . {ys[0]} + {ys[1]} = {ys[0] + ys[1]} . {ys[0] + ys[1]} + {ys[2]} = {s} . #### {s}"
    return Problem(q, sol, s, "reverse_add")


def _l_sort_second(r: random.Random) -> Problem:
    xs = _digits(r, 5, distinct=True)
    ys = sorted(xs)
    q = f"list {_show(xs)} . sort it and add the two smallest ."
    s = ys[0] + ys[1]
    sol = f"sorted {_show(ys)} . {ys[0]} + {ys[1]} = {s} . #### {s}"
    return Problem(q, sol, s, "sort_add")


LIST_TEMPLATES: dict[str, Callable[[random.Random], Problem]] = {
    "pick_add": _l_pick_add,
    "pick_mul": _l_pick_mul,
    "max_min": _l_max_min,
    "reverse_add": _l_reverse_add,
    "sort_add": _l_sort_second,
}

FAMILIES: dict[str, dict[str, Callable[[random.Random], Problem]]] = {"arith": TEMPLATES, "lists": LIST_TEMPLATES}


def generate(rng: random.Random, n: int, exclude: set[str] | frozenset[str] = frozenset(),
             family: str = "arith") -> list[Problem]:
    """`n` distinct problems (templates in turn), none whose question is in `exclude`."""
    templates = FAMILIES[family]
    out: list[Problem] = []
    seen = set(exclude)
    names = list(templates)
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct problems; the templates' space is too small")
        p = templates[names[len(out) % len(names)]](rng)
        if p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return out


def make_splits(seed: int, n_train: int, n_test: int, family: str = "arith",
                n_dev: int = 0) -> tuple[list[Problem], list[Problem]] | tuple[list[Problem], list[Problem], list[Problem]]:
    """(train, held-out), or (train, held-out, dev) when `n_dev` > 0: disjoint by question. The
    held-out split is drawn first so its content does not depend on n_train; dev (used only to
    choose learning rates and the student's start) comes next."""
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    rng = random.Random(f"{family}:{seed}" if family != "arith" else seed)
    test = generate(rng, n_test, family=family)
    seen = {p.question for p in test}
    dev = generate(rng, n_dev, exclude=seen, family=family) if n_dev else []
    seen |= {p.question for p in dev}
    train = generate(rng, n_train, exclude=seen, family=family)
    return (train, test, dev) if n_dev else (train, test)


def corpus(problems: list[Problem]) -> list[str]:
    """All texts the tokenizer is trained on."""
    return [t for p in problems for t in (p.question, p.solution)]


_NUM = re.compile(r"^\d+$")


def is_number(word: str) -> bool:
    """A word of a solution that is a number (an operand, a result, a list item)."""
    return bool(_NUM.match(word))


RESTART = "?"  # the lab's "wait, that is wrong": a token both families' vocabularies already have


def restart(solution: str) -> str:
    """A repair: the restart mark, then the whole correct solution (the last #### counts)."""
    return f"{RESTART} {solution}"


def corrupt_prefix(solution: str, rng: random.Random, repair: bool = False) -> tuple[str, str] | None:
    """(prefix with one number changed, the continuation the teacher should learn).

    One number of the solution (a copied operand, an intermediate result or a list item, never
    the final answer after ####) is moved by 1-3, and the solution is cut somewhere after it.
    The continuation is the reference's rest (the teacher learns to go on from an imperfect
    prefix) or, with `repair`, `restart(solution)`: the teacher marks the mistake and writes the
    correct solution, which is how a teacher continuing a student's flawed rollout at a fork can
    still reach the right answer. None if the solution has no number to corrupt.
    """
    words = solution.split(" ")
    end = words.index("####") if "####" in words else len(words)
    nums = [i for i in range(end) if _NUM.match(words[i])]
    if not nums:
        return None
    i = rng.choice(nums)
    v = int(words[i])
    bad = [w for w in (v + d for d in (-3, -2, -1, 1, 2, 3)) if 0 <= w < 200]
    words = list(words)
    words[i] = str(rng.choice(bad))
    cut = rng.randint(i + 1, end)  # the prefix ends after the bad number, before the answer line
    return " ".join(words[:cut]), (restart(solution) if repair else " ".join(words[cut:]))
