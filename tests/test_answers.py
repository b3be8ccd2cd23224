"""Answer extraction and comparison (math-verify) on hand-written completions."""

from __future__ import annotations

import math

import pytest

from omniopd.answers import answer_span, extract_answer, is_correct, pass_at_k


@pytest.mark.parametrize(
    "text, expected",
    [
        ("He has 3 + 4 = 7 apples.\n#### 7", "7"),  # GSM8K format
        ("#### 70,000", "70000"),  # thousands separator
        ("So she pays $1,200.50 in total.", "1200.50"),  # currency + decimal
        ("The answer is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),  # boxed fraction
        ("First 5 apples, then 12 apples.", "12"),  # plain: the last number
        ("The answer is 3/4", "3/4"),
        ("He runs 12 km every day.", "12"),  # units
        ("The final answer is 42 dollars. I hope it is correct.", "42"),
        ("-5 degrees", "-5"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "I do not know.", "\\boxed{}"])
def test_missing_answer_is_none_and_wrong(text):
    assert extract_answer(text) is None
    assert not is_correct(text, "#### 5")


def test_hashes_win_over_later_rambling():
    # a model that answers and then starts a new problem has already answered
    text = "3 * 4 = 12 cookies.\n#### 12\nQuestion: Tom has 5 pens and buys 6 more..."
    assert extract_answer(text) == "12"
    assert is_correct(text, "12")


def test_last_boxed_wins():
    text = "Try \\boxed{2}? No: recompute, \\boxed{\\frac{1}{2}}"
    assert answer_span(text) == "$\\frac{1}{2}$"
    assert is_correct(text, "0.5")


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("#### 18", "Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", True),  # raw GSM8K gold
        ("The answer is 18.0", "18", True),  # decimal vs integer
        ("The answer is 0.75", "3/4", True),  # decimal vs fraction
        ("\\boxed{\\frac{3}{4}}", "0.75", True),
        ("It costs $70,000.", "#### 70000", True),
        ("He walks 12 km.", "12", True),  # unit is ignored
        ("The answer is 17", "18", False),
        ("The answer is 0.7", "3/4", False),
        ("#### 1/2", "2", False),
    ],
)
def test_is_correct(pred, gold, ok):
    assert is_correct(pred, gold) is ok


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # 1 - C(7,2)/C(10,2) = 1 - 21/45
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)
    assert pass_at_k(4, 2, 3) == 1.0  # fewer wrong than k: always a hit
    assert math.isclose(pass_at_k(8, 1, 8), 1.0)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
