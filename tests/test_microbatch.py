"""Micro-batches by tokens (omniopd/microbatch.py) and the learner's use of them: the packing rule
with hand-computed cases, and through the real OmniOPDTrainer and TRL's own batch split — the
micro-batched loss and gradients equal the one-batch ones, and every appended row counts for any
gradient accumulation K."""

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig

from omniopd.learner import OmniOPDTrainer
from omniopd.microbatch import combine_stats, microbatches, pack_rows, pad_rows_to_multiple, slice_batch
from omniopd.rollouts import pad_rows_B_T
from tests.tiny import tiny_llama


def test_pack_rows_longest_first_first_fit():
    prompt, completion = [2, 3, 1, 4], [5, 0, 2, 6]
    # row 1 has no completion token: dropped. Totals: row3 10, row0 7, row2 3.
    # budget 12: [3] costs 1 x (4 + 6) = 10; adding row 0 would cost 2 x (4 + 6) = 20 > 12
    assert pack_rows(prompt, completion, 12) == [[3], [0], [2]]
    # budget 20: rows 3 and 0 share (2 x 10 = 20); row 2 would make 3 x 10 = 30
    assert pack_rows(prompt, completion, 20) == [[0, 3], [2]]
    # a row longer than the budget gets a micro-batch of its own
    assert pack_rows([4], [6], 5) == [[0]]
    with pytest.raises(ValueError):
        pack_rows([1], [1], 0)


def _batch(prompts, comps, *, appended=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(comps)
    mask = pad_rows_B_T([[1] * len(c) for c in comps], 0, torch.long)
    adv = torch.randn(mask.shape, generator=g) * mask
    audit = torch.rand(mask.shape, generator=g) < 0.5
    audit[B - appended:] = True  # appended rows are audited in full
    return {"prompt_ids": pad_rows_B_T(prompts, 0, torch.long, left=True),
            "prompt_mask": pad_rows_B_T([[1] * len(p) for p in prompts], 0, torch.long, left=True),
            "completion_ids": pad_rows_B_T(comps, 0, torch.long), "completion_mask": mask,
            "advantages": adv, "audit_mask": audit & mask.bool(), "behaviour_logps": torch.zeros(mask.shape),
            "num_items_in_batch": mask[:B - appended].sum()}


def test_slice_batch_trims_padding_columns():
    b = _batch([[5, 6, 7], [8]], [[1, 2], [3, 4, 5, 6]])
    one = slice_batch(b, [0])
    assert one["prompt_ids"].tolist() == [[5, 6, 7]] and one["completion_ids"].tolist() == [[1, 2]]
    assert one["advantages"].shape == (1, 2) and one["num_items_in_batch"] is b["num_items_in_batch"]
    two = slice_batch(b, [1])
    assert two["prompt_ids"].tolist() == [[8]] and two["completion_ids"].tolist() == [[3, 4, 5, 6]]


def test_pad_rows_to_multiple_adds_empty_rows_only():
    b = _batch([[1, 2]] * 5, [[3] * 4, [3] * 2, [3] * 3, [3], [3] * 2])
    out = pad_rows_to_multiple(b, 4)
    assert out["completion_ids"].size(0) == 8
    assert int(out["completion_mask"].sum()) == int(b["completion_mask"].sum())
    assert not out["audit_mask"][5:].any() and float(out["advantages"][5:].abs().sum()) == 0.0
    assert pad_rows_to_multiple(b, 5)["completion_ids"].size(0) == 5


def test_combine_stats_sums_and_weighted_means():
    a = ({"policy_loss": torch.tensor(1.0), "kl": torch.tensor(0.2), "drift_gate_min": torch.tensor(0.9)}, {"kl": 3.0})
    b = ({"policy_loss": torch.tensor(0.5), "kl": torch.tensor(0.6), "drift_gate_min": torch.tensor(0.4)}, {"kl": 1.0})
    out = combine_stats([a, b])
    assert float(out["policy_loss"]) == pytest.approx(1.5)
    assert float(out["kl"]) == pytest.approx((0.2 * 3 + 0.6 * 1) / 4)  # 0.3
    assert float(out["drift_gate_min"]) == pytest.approx(0.4)


def _rows(vocab, seed=0):
    """8 student rows + 5 appended rows (longer prompts, varied completions): 13 rows, not a multiple of 2 or 4."""
    g = torch.Generator().manual_seed(seed)
    r = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    prompts = [r(6 + i % 3) for i in range(8)]
    comps = [r(5 + (3 * i) % 11) for i in range(8)]
    prompts += [prompts[i] + comps[i][:3] for i in range(5)]
    comps += [r(4 + 2 * i) for i in range(5)]
    return _batch(prompts, comps, appended=5, seed=seed)


def _trainer(tmp_path, tok, model, *, k=1, budget=None):
    args = GRPOConfig(output_dir=str(tmp_path / f"k{k}-{budget}"), per_device_train_batch_size=8 // k, num_generations=4,
                      gradient_accumulation_steps=k, steps_per_generation=k, beta=0.0, loss_type="dapo", use_cpu=True,
                      bf16=False, report_to=[], max_steps=1, remove_unused_columns=False, max_completion_length=32)
    return OmniOPDTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"prompt": "x"}] * 8),
                          processing_class=tok, pipeline=object(), kl_beta=0.1, microbatch_tokens=budget)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_microbatched_loss_and_gradients_equal_one_batch(tmp_path, tiny_tok):
    batch = _rows(len(tiny_tok))
    results = {}
    for budget in (None, 40):
        model = tiny_llama(tiny_tok, seed=0)
        tr = _trainer(tmp_path, tiny_tok, model, budget=budget)
        tr.model.train()
        tr.current_gradient_accumulation_steps = 1
        loss = tr.compute_loss(tr.model, dict(batch))
        tr.accelerator.backward(loss)
        results[budget] = (float(loss.detach()), _grads(tr.model), tr._metrics["train"]["omniopd/microbatches"][-1])
    (l1, g1, n1), (l2, g2, n2) = results[None], results[40]
    assert n1 == 1 and n2 >= 4  # the budget really split the batch
    assert l2 == pytest.approx(l1, abs=1e-5)
    assert g1.keys() == g2.keys()
    for name in g1:
        assert torch.allclose(g1[name], g2[name], atol=1e-5), name


@pytest.mark.parametrize("budget", [None, 40])
def test_every_appended_row_counts_for_any_accumulation(tmp_path, tiny_tok, budget):
    """TRL splits the batch into K slices (dropping a remainder); with our padding every row of the
    13 lands in one slice, so the K slices' accumulated gradient equals the one-batch gradient."""
    batch = _rows(len(tiny_tok))
    ref_model = tiny_llama(tiny_tok, seed=0)
    ref = _trainer(tmp_path, tiny_tok, ref_model)
    ref.model.train()
    ref.current_gradient_accumulation_steps = 1
    ref_loss = ref.compute_loss(ref.model, dict(batch))
    ref.accelerator.backward(ref_loss)
    want = _grads(ref.model)
    for k in (1, 2, 4):
        model = tiny_llama(tiny_tok, seed=0)
        tr = _trainer(tmp_path, tiny_tok, model, k=k, budget=budget)
        tr._scored_batch = lambda inputs, b=batch: dict(b)  # the learner pads it for TRL's split
        tr.current_gradient_accumulation_steps = k
        total = sum(float(tr.training_step(tr.model, [{"prompt": "x"}] * 8, None)) for _ in range(k))
        got = _grads(tr.model)
        # every slice is normalised by the whole batch's tokens: the K slices add up to the one batch
        assert total == pytest.approx(float(ref_loss), abs=1e-5), k
        for name in want:
            assert torch.allclose(got[name], want[name], atol=1e-5), (k, name)


def test_learner_pads_batches_for_trl_split(tmp_path, tiny_tok):
    """The learner's own batch (not the test's) is padded to a multiple of steps_per_generation."""
    b = _rows(len(tiny_tok))
    assert microbatches(b, None)[0]["completion_ids"].size(0) == 13
    assert pad_rows_to_multiple(b, 4)["completion_ids"].size(0) == 16
