"""Issue 18's lab pieces with hand-computed values: the price card, the recipes' loss terms and
selection rules, the equal-dollar report; and a tiny dollar-budgeted run of every new arm."""

from __future__ import annotations

import math

import pytest
import torch

from bench.lab import losses, selection
from bench.lab.dollars import Spend, price_card


# --- dollars ----------------------------------------------------------------------------------
def test_price_card_is_claude_haiku_4_5_list_prices_from_the_capability_table():
    card = price_card("claude-haiku-4-5")
    assert (card.usd_per_mtok_in, card.usd_per_mtok_out) == (1.0, 5.0)
    # 30 prompt tokens + 20 output tokens: 30 * 1e-6 + 20 * 5e-6 = 1.3e-4
    assert card.call_usd(30, 20) == pytest.approx(1.3e-4)
    # a fork: prompt 25 + prefix 15 = 40 input tokens, 32 output tokens -> 40e-6 + 160e-6
    sp = Spend()
    sp.add(40, 32)
    sp.add(30, 20)
    assert sp.usd(card) == pytest.approx(40e-6 + 160e-6 + 1.3e-4)
    assert sp.teacher_tokens == 52 and sp.calls == 2
    # cache reads at a tenth of the input price; the lab's prompts are far below Haiku's 4,096
    assert card.call_usd(0, 0, 1_000_000) == pytest.approx(0.10)
    assert not card.cacheable(100) and card.cacheable(4096)
    # white-box scored tokens are priced as input tokens
    assert Spend(scored_tokens=1000).usd(card) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        price_card("llama-3")


def test_spend_of_a_teachers_usage_totals():
    sp = Spend.of_usage({"input_tokens": 100.0, "output_tokens": 10.0, "samples": 3})
    assert (sp.input_tokens, sp.output_tokens, sp.calls) == (100.0, 10.0, 3)
    assert sp.usd(price_card()) == pytest.approx(100e-6 + 50e-6)


# --- losses -----------------------------------------------------------------------------------
def test_dpo_loss_by_hand():
    # margin = (-1 - -1.5) - (-2 - -1.5) = 0.5 + 0.5 = 1; beta 1: -log sigmoid(1) = log(1 + e^-1)
    got = losses.dpo_loss_B(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -3.0]), torch.tensor([-1.5, -3.0]),
                            torch.tensor([-1.5, -3.0]), beta=1.0)
    assert got[0].item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert got[1].item() == pytest.approx(math.log(2), abs=1e-6)  # pi == ref: log 2
    # beta 0.1 on margin 1: log(1 + e^-0.1) = 0.64440
    got = losses.dpo_loss_B(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.1)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-0.1)), abs=1e-6)


def test_dpo_gradient_raises_the_preferred_and_lowers_the_wrong_equally_at_the_snapshot():
    pos, neg = torch.tensor([-2.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    losses.dpo_loss_B(pos, neg, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1).sum().backward()
    # d/dpos = -beta * sigmoid(-0) = -0.05, d/dneg = +0.05
    assert pos.grad.item() == pytest.approx(-0.05) and neg.grad.item() == pytest.approx(0.05)


def test_sequence_logprobs_and_ce_by_hand():
    # vocabulary 2, uniform logits at every position: log p = log 0.5 for every label token
    logits = torch.zeros(1, 4, 2)
    labels = torch.tensor([[-100, -100, 1, 0]])  # the last two tokens are the completion
    assert losses.sequence_logprobs_B(logits, labels).item() == pytest.approx(2 * math.log(0.5))
    assert losses.ce_loss(logits, labels).item() == pytest.approx(math.log(2))
    # position 1 predicts token 1 with p = e^2 / (e^2 + 1)
    logits[0, 1] = torch.tensor([0.0, 2.0])
    want = math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(0.5)
    assert losses.sequence_logprobs_B(logits, labels).item() == pytest.approx(want, abs=1e-6)
    assert losses.ce_loss(logits, labels).item() == pytest.approx(-want / 2, abs=1e-6)


def test_ce_loss_is_what_the_model_returns():
    from bench.lab import nets, tasks
    from bench.lab.tokenizer import train_tokenizer

    train, _ = tasks.make_splits(0, 50, 5)
    tok = train_tokenizer(tasks.corpus(train))
    model = nets.build_model(nets.NetSize(16, 1, 2, 32), tok, seed=0)
    batch = nets.collate(nets.encode_pairs(tok, [(p.question, p.solution) for p in train[:4]]), tok.pad_token_id)
    out = model(**batch)
    assert losses.ce_loss(out.logits, batch["labels"]).item() == pytest.approx(out.loss.item(), rel=1e-5)


# --- selection rules --------------------------------------------------------------------------
def test_gate_buys_only_where_every_sample_fails():
    correct = [[False, False, False, False], [False, True, False, True], [True, True, True, True]]
    assert selection.gate_P(correct) == [True, False, False]
    assert selection.free_targets(["a", "b", "c", "b"], [False, True, False, True]) == ["b"]
    assert selection.negatives_of(["a", "b", "a", " "], [False, True, False, False]) == ["a"]


def test_first_wrong_step_and_oracle_repair_by_hand():
    ref = "tom has 3 + 2 = 5 pens . then 5 - 1 = 4 pens . #### 4"
    # the copied item differs (its own wording, kept); the second step's numbers are wrong
    student = "tom has 3 + 2 = 5 cups . then 5 - 1 = 3 cups . #### 3"
    assert selection.first_wrong_step(student, ref) == 1
    prefix, rest = selection.oracle_repair(student, ref)
    assert prefix == "tom has 3 + 2 = 5 cups" and rest == "then 5 - 1 = 4 pens . #### 4"
    assert selection.join_repair(prefix, rest) == "tom has 3 + 2 = 5 cups . then 5 - 1 = 4 pens . #### 4"
    # wrong from the first step: the whole reference
    assert selection.oracle_repair("tom has 3 + 2 = 6 pens . #### 6", ref) == ("", ref)
    assert selection.join_repair("", ref) == ref
    # a right solution has nothing to repair; a truncated one is wrong where it stops
    assert selection.oracle_repair(ref, ref) is None
    assert selection.first_wrong_step("tom has 3 + 2 = 5 pens", ref) == 1
    lists = "a is 4 . b is 9 . 4 + 9 = 13 . #### 13"
    assert selection.first_wrong_step("a is 4 . b is 8 . 4 + 8 = 12 . #### 12", lists) == 1
    assert selection.steps(lists) == ["a is 4", "b is 9", "4 + 9 = 13", "#### 13"]


def test_after_restart_keeps_the_teachers_last_attempt():
    ref = "tom has 3 + 2 = 5 pens . then 5 - 1 = 4 pens . #### 4"
    assert selection.after_restart(ref) == ref
    assert selection.after_restart("tom has 3 + 2 = 6 ? " + ref) == ref
    assert selection.after_restart("3 + 2 = 6 ? 3 + 2 = 7 ? " + ref) == ref


# --- the report at equal dollars --------------------------------------------------------------
def _rec(arm, task, seed, b, acc, steps=10):
    return {"arm": arm, "access": "black-box" if arm != "no-training" else "none", "task": task, "seed": seed,
            "budget_usd": b, "accuracy": acc, "accuracy_t1": acc, "kl_to_start": 0.0, "weights_l2": 1.0, "lr": 1e-4,
            "teacher_tokens": 1, "teacher_usd": b, "teacher_input_tokens": 1, "steps": steps if arm != "no-training" else 0,
            "train_s": 1.0}


def test_versus_detectable_difference_and_default_arm_by_hand():
    recs = []
    for t in ("arith", "lists"):
        for seed, d in enumerate((-0.01, 0.0, 0.01)):
            for b in (0.5, 1.0):
                recs.append(_rec("sft", t, seed, b, 0.50 + d))
                recs.append(_rec("better", t, seed, b, 0.60 + d))
                recs.append(_rec("same", t, seed, b, 0.505 + d))
                recs.append(_rec("oracle-repair", t, seed, b, 0.90 + d))
                recs.append(_rec("sft-reference", t, seed, b, 0.80 + d))
    from bench.lab import report as rep

    r = {"records": recs, "budget_unit": "usd", "scale": {"n_test": 400}, "arms": ["sft", "better", "same", "oracle-repair"]}
    vs = rep.versus(r)
    row = vs["arith"]["better"][-1]
    # se of each arm: sd 0.01 / sqrt(3); combined sqrt(2) * 0.01 / sqrt(3) = 0.008165; margin 0.1 / 0.008165
    assert row["minus_sft"] == pytest.approx(0.1) and row["margin_se"] == pytest.approx(0.1 / (0.01 * math.sqrt(2 / 3)))
    dd = rep.detectable_difference(r)["arith"]
    assert dd["sd_seed"] == pytest.approx(0.01) and dd["seeds"] == 3
    assert dd["mdd_seeds"] == pytest.approx(2 * math.sqrt(2) * 0.01 / math.sqrt(3))
    pbar = (0.5 + 0.6 + 0.505 + 0.9 + 0.8) / 5
    assert dd["mdd_with_heldout"] == pytest.approx(2 * math.sqrt(2 * 0.01 ** 2 / 3 + 2 * pbar * (1 - pbar) / 400))
    d = rep.default_arm(r)
    assert d["arm"] == "better"  # the oracle and SFT on references are better still, but no user can run them
    r["records"] = [x for x in recs if x["arm"] != "better"]
    assert rep.default_arm(r)["arm"] == "sft"
    assert rep.dollars_to_match(r)["arith"]["oracle-repair"] == 0.5


# --- a tiny run of every new arm, in dollars --------------------------------------------------
@pytest.mark.slow
def test_new_arms_run_at_tiny_size_in_dollars(tmp_path):
    """Every issue-18 arm trains from the start at tiny size with dollar milestones: its
    records carry budget_usd and teacher_usd, spend reaches each milestone (overshooting by
    less than one purchase), and the gated arms buy fewer solutions than they see problems."""
    import dataclasses

    from bench.lab.run import SCALES, run_lab

    arms = ["no-training", "sft", "sft-neg", "sft-gated", "sft-gated-neg", "oracle-repair", "sft-then-dagger", "noise-floor"]
    scale = dataclasses.replace(SCALES["tiny"], budget_usd=0.004, max_arm_steps=200)
    report = run_lab(scale, arms, tasks=["arith"], seeds=1, data_seed=5, run_dir=tmp_path / "run",
                     cache_dir=tmp_path / "cache", workers=1, ignore_checks=True)
    assert not report["errors"], report["errors"]
    budgets = scale.budgets()
    assert report["budget_unit"] == "usd" and budgets == [0.001, 0.002, 0.003, 0.004]
    by = {(r["arm"], r["budget_usd"]): r for r in report["records"]}
    assert len(by) == len(arms) * len(budgets)
    card = price_card()
    most = card.call_usd(200, 2 * scale.max_new_tokens)  # one purchase, generously
    for (arm, b), r in by.items():
        assert "budget_tokens" not in r and r["price_card"] == "claude-haiku-4-5"
        if arm in ("no-training", "noise-floor"):
            assert r["teacher_usd"] == 0
            continue
        assert r["budget_reached"], (arm, b, r["teacher_usd"])
        assert b <= r["teacher_usd"] <= b + most, (arm, b, r["teacher_usd"])
        assert r["teacher_input_tokens"] > 0 and r["steps"] >= 1
    assert by[("sft-gated", budgets[-1])]["extra"]["problems"] >= by[("sft-gated", budgets[-1])]["extra"]["solutions"]
    assert by[("oracle-repair", budgets[-1])]["extra"]["solutions"] == 0
    assert by[("sft-then-dagger", budgets[-1])]["extra"]["phase2_from_step"] >= 1
    from bench.lab.report import annotate

    assert annotate(report)["default_arm"] is not None


def test_reference_source_bills_the_reference_as_a_teacher_answer():
    """sft-reference: the reference solution is the target, billed as the teacher's answer
    would be (prompt tokens in, solution tokens + EOS out); no teacher call is made."""
    from types import SimpleNamespace

    from bench.lab import nets, tasks
    from bench.lab.recipes import Recipe, build_round
    from bench.lab.tokenizer import train_tokenizer

    train, _ = tasks.make_splits(0, 50, 5)
    tok = train_tokenizer(tasks.corpus(train))
    ctx = SimpleNamespace(tokenizer=tok, local_teacher=lambda: (_ for _ in ()).throw(AssertionError("no teacher")))
    spend = Spend()
    rnd = build_round(ctx, Recipe(source="reference"), train[:2], None, spend)
    assert rnd.positives == [(p.question, p.solution) for p in train[:2]]
    n_in = sum(len(tok(nets.prompt_text(tok, p.question), add_special_tokens=False)["input_ids"]) for p in train[:2])
    n_out = sum(len(p.solution.split(" ")) + 1 for p in train[:2])  # the word-level tokenizer: one token a word
    assert (spend.input_tokens, spend.output_tokens, spend.calls) == (n_in, n_out, 2)


def test_oracle_round_trains_on_the_repair_and_bills_the_corrected_rest():
    from types import SimpleNamespace

    from bench.lab import nets, tasks
    from bench.lab.recipes import Recipe, build_round
    from bench.lab.tokenizer import train_tokenizer

    p = tasks.Problem("tom has 3 pens . tom buys 2 more pens and then gives 1 away . how many pens does tom have now ?",
                      "tom has 3 + 2 = 5 pens . then 5 - 1 = 4 pens . #### 4", 4, "buy_give")
    train, _ = tasks.make_splits(0, 50, 5)
    tok = train_tokenizer(tasks.corpus(train + [p]))
    ctx = SimpleNamespace(tokenizer=tok)
    wrong = "tom has 3 + 2 = 5 pens . then 5 - 1 = 3 pens . #### 3"
    spend = Spend()
    rnd = build_round(ctx, Recipe(oracle_repair=True), [p, p], [[wrong], [p.solution]], spend)
    assert rnd.positives == [(p.question, p.solution), (p.question, p.solution)] and rnd.repairs == 1 and rnd.free == 1
    prompt = len(tok(nets.prompt_text(tok, p.question), add_special_tokens=False)["input_ids"])
    # in: prompt + the student's 19 words; out: "then 5 - 1 = 4 pens . #### 4" = 10 words + EOS
    assert (spend.input_tokens, spend.output_tokens, spend.calls) == (prompt + 19, 11, 1)


def test_clean_round_trains_on_the_last_attempt_and_bills_the_whole_text(monkeypatch):
    from types import SimpleNamespace

    from bench.lab import recipes, tasks
    from bench.lab.recipes import Recipe, build_round

    p = tasks.Problem("q ?", "3 + 2 = 5 . #### 5", 5, "t")
    monkeypatch.setattr(recipes, "buy_solutions", lambda ctx, qs: [(q, "3 + 2 = 6 ? 3 + 2 = 5 . #### 5", 10.0, 13.0) for q in qs])
    spend = Spend()
    rnd = build_round(SimpleNamespace(tokenizer=None), Recipe(clean=True), [p], None, spend)
    assert rnd.positives == [("q ?", "3 + 2 = 5 . #### 5")] and (spend.input_tokens, spend.output_tokens) == (10.0, 13.0)
    rnd = build_round(SimpleNamespace(tokenizer=None), Recipe(), [p], None, spend)
    assert rnd.positives == [("q ?", "3 + 2 = 6 ? 3 + 2 = 5 . #### 5")]
