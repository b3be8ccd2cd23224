"""The distillation lab: its problems, its tokenizer, and a smoke run of every arm at tiny size."""

from __future__ import annotations

import math
import re

import pytest

from bench.lab import tasks
from bench.lab.tokenizer import train_tokenizer


def _check_solution(p: tasks.Problem) -> None:
    """Every 'x op y = z' step in the solution is true arithmetic, and the last one is the answer."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
    steps = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", p.solution)
    assert len(steps) >= 2, p.solution
    for a, op, b, z in steps:
        assert ops[op](int(a), int(b)) == int(z), p.solution
    assert int(steps[-1][3]) == p.answer
    assert p.solution.endswith(f"#### {p.answer}")


def test_problems_are_exact_seeded_and_splits_disjoint():
    train, test = tasks.make_splits(7, 600, 120)
    assert len(train) == 600 and len(test) == 120
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.question for p in train}) == 600
    assert {p.template for p in test} == set(tasks.TEMPLATES)
    for p in train + test:
        _check_solution(p)
        assert p.answer >= 0
    again, _ = tasks.make_splits(7, 600, 120)
    assert [p.question for p in again] == [p.question for p in train]
    other, _ = tasks.make_splits(8, 600, 120)
    assert [p.question for p in other] != [p.question for p in train]


def test_tokenizer_round_trips_and_has_a_chat_template():
    train, test = tasks.make_splits(0, 300, 30)
    tok = train_tokenizer(tasks.corpus(train))
    for p in test:
        for text in (p.question, p.solution):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "tom has 3 pens ."}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|assistant|> ")
    cont = tok.apply_chat_template([{"role": "user", "content": "q ?"}, {"role": "assistant", "content": "tom has 3"}],
                                   tokenize=False, continue_final_message=True)
    assert cont.endswith("tom has 3")
    assert tok.eos_token == "<|end|>"


@pytest.mark.slow
def test_every_arm_runs_at_tiny_size(tmp_path):
    """One seed, two steps per arm: every arm trains (weights move), spends about its teacher
    budget (trained arms) and reports an accuracy in [0, 1]."""
    from bench.lab.arms import ARMS
    from bench.lab.run import SCALES, run_lab, table_md

    scale = SCALES["tiny"]
    report = run_lab(scale, tmp_path / "lab", list(ARMS), seeds=1)
    by_arm = {r["arm"]: r for r in report["results"]}
    assert set(by_arm) == set(ARMS)
    for name, r in by_arm.items():
        assert 0.0 <= r["accuracy"] <= 1.0 and not math.isnan(r["accuracy"])
        if name == "no-training":
            assert r["teacher_tokens"] == 0 and r["extra"]["weights_moved_l2"] == 0.0
            continue
        assert r["teacher_tokens"] > 0, name
        assert r["steps"] >= 1, name
        assert r["extra"]["weights_moved_l2"] > 0.0, name
    # SFT stops collecting solutions at the budget (one solution of overshoot at most)
    assert scale.budget_tokens <= by_arm["sft"]["teacher_tokens"] <= scale.budget_tokens + scale.max_new_tokens
    assert 0.0 <= report["teacher"]["accuracy"] <= 1.0
    md = table_md(report)
    for name in ARMS:
        assert f"| {name} |" in md
