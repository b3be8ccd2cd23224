"""The distillation lab: its problems, its tokenizer, and a smoke run of every arm at tiny size."""

from __future__ import annotations

import random
import re

import pytest

from bench.lab import tasks
from bench.lab.tokenizer import train_tokenizer


def _check_solution(p: tasks.Problem) -> None:
    """Every 'x op y = z' step in the solution is true arithmetic, and the last one is the answer."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
    steps = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", p.solution)
    assert len(steps) >= 1, p.solution
    for a, op, b, z in steps:
        assert ops[op](int(a), int(b)) == int(z), p.solution
    assert int(steps[-1][3]) == p.answer
    assert p.solution.endswith(f"#### {p.answer}")
    assert 0 <= p.answer < 200


def _list_answer(q: str) -> int:
    """The lists family's answer recomputed from the question text alone."""
    head, op = q.split(" . ")[0].split()[1:], q.split(" . ")[1]
    if len(head) > 1 and not head[0].isdigit():  # labelled: "a 4 b 9 ..."
        xs = dict(zip(head[0::2], (int(x) for x in head[1::2])))
        k1, k2 = op.split()[1], op.split()[3]
        return xs[k1] + xs[k2] if op.startswith("add") else xs[k1] * xs[k2]
    xs = [int(w) for w in head]
    if "largest minus smallest" in q:
        return max(xs) - min(xs)
    if "reverse" in q:
        return sum(xs[::-1][:3])
    if "two smallest" in q:
        return sum(sorted(xs)[:2])
    raise AssertionError(q)


@pytest.mark.parametrize("family", ["arith", "lists"])
def test_problems_are_exact_seeded_and_splits_disjoint(family):
    train, test, dev = tasks.make_splits(7, 600, 120, family, n_dev=50)
    assert len(train) == 600 and len(test) == 120 and len(dev) == 50
    qs = [{p.question for p in split} for split in (train, test, dev)]
    assert not (qs[0] & qs[1]) and not (qs[0] & qs[2]) and not (qs[1] & qs[2])
    assert len(qs[0]) == 600
    assert {p.template for p in test} == set(tasks.FAMILIES[family])
    for p in train + test:
        _check_solution(p)
        if family == "lists":
            assert _list_answer(p.question) == p.answer, p.question
    again_tr, again_te, _ = tasks.make_splits(7, 600, 120, family, n_dev=50)
    assert [p.question for p in again_tr] == [p.question for p in train]
    other, _, _ = tasks.make_splits(8, 600, 120, family, n_dev=50)
    assert [p.question for p in other] != [p.question for p in train]


def test_corrupt_prefix_changes_one_number_before_the_answer():
    rng = random.Random(0)
    train, _ = tasks.make_splits(3, 200, 10, "arith")
    for p in train:
        prefix, rest = tasks.corrupt_prefix(p.solution, rng)
        words, ref = (prefix + " " + rest).split(" "), p.solution.split(" ")
        assert len(words) == len(ref)
        diff = [i for i, (a, b) in enumerate(zip(words, ref)) if a != b]
        assert len(diff) == 1 and diff[0] < len(prefix.split(" ")) and 1 <= abs(int(words[diff[0]]) - int(ref[diff[0]])) <= 3
        assert rest.endswith(f"#### {p.answer}")


def test_teacher_data_restarts_only_where_the_numbers_are_already_wrong():
    """A rollout cut where it still agrees with the reference (or only a copied word is off)
    continues with the reference's rest; a cut whose numbers are off restarts with the whole
    reference after the mark; restarts make up the asked share of the data."""
    from bench.lab.prepare import _cut_examples, teacher_data

    p = tasks.Problem("tom has 3 pens . tom buys 2 more pens and then gives 1 away . how many pens does tom have now ?",
                      "tom has 3 + 2 = 5 pens . then 5 - 1 = 4 pens . #### 4", 4, "buy_give")
    ref = p.solution.split(" ")
    rng = random.Random(0)
    for text, flaw_at in [(p.solution, None), (p.solution.replace("pens", "cups"), None),
                          ("tom has 3 + 2 = 6 pens . then 6 - 1 = 5 pens . #### 5", 6)]:
        for q, pre, rest, flawed in _cut_examples(p, text, rng, cuts=30):
            words = pre.split(" ")
            assert q == p.question and text.startswith(pre)
            assert flawed == (flaw_at is not None and len(words) > flaw_at)
            assert rest == (tasks.restart(p.solution) if flawed else " ".join(ref[len(words):]))
    train, _ = tasks.make_splits(3, 300, 10, "arith")
    rollouts = [" ".join(str(int(w) + 1) if tasks.is_number(w) else w for w in q.solution.split(" ")) for q in train]
    data, counts = teacher_data(train, rollouts, 0.25, seed=0)
    restarts = [d for d in data if len(d) == 3 and d[2].startswith(tasks.RESTART + " ")]
    assert len(restarts) == counts["restart_examples"] and abs(len(restarts) - 0.25 * len(data)) <= 1
    assert counts["continue_examples"] == len(data) - len(restarts) >= 2 * len(train)


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
    """One seed, a few steps per arm (on the lists family; both families' instruments and the
    control arms on arith too): every arm trains (weights move), spends about its teacher
    budget, and the results carry one record per arm x task x seed x milestone with the fields
    the issue asks for, and the checks per task."""
    from bench.lab.arms import ARMS
    from bench.lab.report import table_md
    from bench.lab.run import SCALES, TASKS, run_lab

    scale = SCALES["tiny"]
    budgets = scale.budgets()
    assert len(budgets) >= 4
    report = run_lab(scale, list(ARMS), tasks=["lists"], seeds=1, data_seed=5, run_dir=tmp_path / "run",
                     cache_dir=tmp_path / "cache", workers=1, ignore_checks=True)
    controls = run_lab(scale, ["no-training", "sft", "opd"], tasks=["arith"], seeds=1, data_seed=5,
                       run_dir=tmp_path / "run", cache_dir=tmp_path / "cache", workers=1, ignore_checks=True)
    assert not report["errors"] and not controls["errors"], report["errors"] + controls["errors"]
    report["checks"].update(controls["checks"])
    report["records"] += controls["records"]
    for task in TASKS:
        assert {"teacher_accuracy", "teacher_recovery", "start_accuracy", "positive_control"} <= set(report["checks"][task])
        assert all("passed" in c for c in report["checks"][task].values())
    keys = {"arm", "access", "task", "seed", "budget_tokens", "teacher_tokens", "accuracy", "accuracy_t1", "steps", "lr",
            "kl_to_start", "weights_l2"}
    by = {(r["arm"], r["task"], r["budget_tokens"]): r for r in report["records"]}
    assert len(by) == (len(ARMS) + 3) * len(budgets)
    for (name, task, b), r in by.items():
        assert keys <= set(r), name
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["accuracy_t1"] <= 1.0
        assert r["access"] == ARMS[name].access
        if ARMS[name].kind == "none":
            assert r["teacher_tokens"] == 0 and r["weights_l2"] == 0.0
        elif ARMS[name].kind == "noise":
            assert r["teacher_tokens"] == 0 and (b == budgets[0] or r["weights_l2"] > 0.0)
        elif b == budgets[-1]:
            assert r["teacher_tokens"] > 0 and r["steps"] >= 1 and r["weights_l2"] > 0.0, name
    # SFT stops buying solutions at each milestone (one solution of overshoot at most); a
    # milestone the step cap kept it from reaching says so and records what was spent
    assert by[("sft", "arith", budgets[0])]["budget_reached"]
    for b in budgets:
        r = by[("sft", "arith", b)]
        assert r["teacher_tokens"] <= b + scale.max_new_tokens
        assert r["teacher_tokens"] >= b if r["budget_reached"] else r["steps"] == scale.max_arm_steps
    md = table_md(report)
    for name in ARMS:
        assert f"| {name} |" in md
