import math

import pytest
import torch

from omniopd.scoring import chunk_weight, k_F, pibar_F, pihat_F, trim_to_chars
from omniopd.similarity import build_similarity, edit_similarity, rouge1_f1


def test_design_worked_numbers():
    assert chunk_weight(3.2, 10, 0.05, 1.0) == pytest.approx(3.25 / 11)
    assert chunk_weight(3.2, 10, 0.05, 1.0) == pytest.approx(0.29545454545)
    assert chunk_weight(0.0, 10, 0.05, 1.0) == pytest.approx(0.0045454545)
    assert chunk_weight(10.0, 10, 1.0, 1.0) == pytest.approx(1.0)


def test_vectorised_matches_scalar_and_handles_teacher_failure():
    k = torch.tensor([3.2, 0.0, 10.0, 0.0])
    n = torch.tensor([10.0, 10.0, 10.0, 0.0])  # the last chunk's teacher failed: N_eff = 0
    pb = torch.tensor([0.05, 0.05, 1.0, 0.3])
    got = pihat_F(k, n, pb, 1.0)
    assert got.tolist() == pytest.approx([3.25 / 11, 0.05 / 11, 1.0, 0.3])
    # alpha = 0 (no smoothing) with N_eff = 0 must not be NaN either
    assert pihat_F(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.4]), 0.0).tolist() == pytest.approx([0.4])
    assert chunk_weight(0.0, 0, 0.4, 1.0) == pytest.approx(0.4)


def test_n_eff_below_n_uses_n_eff_in_both_places():
    # 7 usable samples of 10 requested: (k + a*pb) / (7 + a)
    k, n = k_F([[1.0] * 5 + [0.5, 0.0]])
    assert (float(k[0]), float(n[0])) == (5.5, 7.0)
    assert pihat_F(k, n, torch.tensor([0.2]), 2.0).item() == pytest.approx((5.5 + 0.4) / 9)


def test_all_samples_identical_to_the_chunk():
    chunk = "so 12 times 3 is 36"
    phi = build_similarity("edit")
    rows = phi([chunk], [[chunk] * 10])
    k, n = k_F(rows)
    assert float(k[0]) == 10.0
    assert pihat_F(k, n, torch.tensor([0.1]), 1.0).item() == pytest.approx((10 + 0.1) / 11)


def test_pibar_is_geometric_mean_probability():
    lp = torch.log(torch.tensor([0.5, 0.25, 0.125]))
    assert pibar_F(lp.sum().unsqueeze(0), torch.tensor([3.0])).item() == pytest.approx(0.25)


def test_edit_similarity_hand_computed():
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("abc", "abc") == 1.0
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0


def test_rouge1_hand_computed():
    # overlap {the, cat} = 2; precision 2/3 (b has 3 tokens), recall 2/4 -> F1 = 2*(2/3)*(1/2)/(2/3+1/2) = 4/7
    assert rouge1_f1("the cat sat down", "The cat ran") == pytest.approx(4 / 7)
    assert rouge1_f1("a b", "c d") == 0.0
    assert rouge1_f1("", "") == 1.0


def test_trim_to_chars_prefers_word_boundary():
    assert trim_to_chars("short", 10, 0.2) == "short"
    assert trim_to_chars("one two three four five", 10, 0.2) == "one two"  # limit 12: "one two thre" -> last space
    assert len(trim_to_chars("x" * 100, 10, 0.2)) == 12


@pytest.mark.slow
def test_embedding_similarity_on_packaged_minilm():
    phi = build_similarity("embedding")
    rows = phi(["The answer is 36 apples."], [["The answer is 36 apples.", "So there are 36 apples.", "zebra quantum violin"]])
    same, para, other = rows[0]
    assert same == pytest.approx(1.0, abs=1e-4)
    assert para > other
    assert all(0.0 <= x <= 1.0 for x in rows[0])
    assert not math.isnan(other)
