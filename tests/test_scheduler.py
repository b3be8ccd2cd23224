import pytest
import torch

from scheduler import ForkScheduler, chunk_starts_B, peak_starts_T, uniform_starts


def H(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_greedy_peaks_non_overlapping_in_order():
    # length 10, C = 3: candidate starts 0..7. By entropy: 5 (0.9) accepted; 6 (0.8) overlaps 5;
    # 1 (0.7) accepted; 3 (0.6) is 2 from 5 and 1 -> blocked; the rest overlap too.
    e = H(0.1, 0.7, 0.2, 0.6, 0.0, 0.9, 0.8, 0.3, 0.5, 0.95)  # position 9 cannot start a chunk (9 + 3 > 10)
    assert peak_starts_T(e, 10, 3, 10) == [1, 5]


def test_max_chunks_caps_selection():
    e = H(0.9, 0.0, 0.0, 0.8, 0.0, 0.0, 0.7, 0.0, 0.0, 0.6)
    assert peak_starts_T(e, 10, 3, 2) == [0, 3]
    assert peak_starts_T(e, 10, 3, 3) == [0, 3, 6]


def test_completion_shorter_than_chunk_is_not_audited():
    assert peak_starts_T(H(1.0, 2.0), 2, 3, 10) == []
    assert uniform_starts(2, 3, 10) == []


def test_exact_fit_has_one_chunk():
    assert peak_starts_T(H(0.1, 0.5, 0.2), 3, 3, 10) == [0]


def test_flat_entropy_ties_go_to_earliest_positions():
    e = torch.ones(12)
    # ties broken by position: 0 accepted, then 1..3 blocked, 4 accepted, ..., 8 accepted (8 + 4 = 12)
    assert peak_starts_T(e, 12, 4, 10) == [0, 4, 8]



def test_padding_beyond_length_is_ignored_exact():
    e = H(0.1, 0.2, 0.3, 0.1, 5.0, 5.0, 5.0)
    # length 4, C = 2: candidates 0, 1, 2. Highest is 2 (0.3); then 0 (0.1) is >= 2 away -> accepted; 1 blocked.
    assert peak_starts_T(e, 4, 2, 10) == [0, 2]


def test_uniform_spacing():
    assert uniform_starts(100, 10, 4) == [0, 25, 50, 75]
    assert uniform_starts(25, 10, 10) == [0, 12]


def test_batch_budget_keeps_highest_entropy_chunks():
    e = torch.stack([H(0.9, 0, 0, 0.2, 0, 0), H(0.5, 0, 0, 0.8, 0, 0)])
    assert chunk_starts_B(e, [6, 6], 3, 10) == [[0, 3], [0, 3]]
    assert chunk_starts_B(e, [6, 6], 3, 10, batch_budget=2) == [[0], [3]]


def test_policy_object_and_validation():
    e = torch.stack([H(0.1, 0.9, 0.2, 0.3)])
    assert ForkScheduler(chunk_tokens=2, chunks_per_completion=5).select(e, torch.tensor([4])) == [[1]]
    assert ForkScheduler(2, 5, selection="uniform").select(e, [4]) == [[0, 2]]
    with pytest.raises(ValueError):
        ForkScheduler(chunk_tokens=0)


def test_early_forks_sit_back_to_back_in_the_first_30_percent():
    from scheduler import early_starts

    assert early_starts(200, 20, 10) == [0, 20, 40]  # 30 % of 200 = 60 tokens -> 3 chunks of 20
    assert early_starts(50, 20, 10) == [0]  # fewer than one chunk in the first 30 %: still one
    assert early_starts(200, 20, 2) == [0, 20]  # at most M
    assert early_starts(10, 20, 10) == []  # shorter than a chunk
    H = torch.zeros(2, 200)
    assert chunk_starts_B(H, [200, 50], 20, 10, selection="early") == [[0, 20, 40], [0]]
