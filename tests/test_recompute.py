"""The teacher-forced recompute gives the logits processor's log-probs and entropies (1e-5)."""

import pytest
import torch

from omniopd.recompute import rollouts_from_token_ids, teacher_forced_B_T
from omniopd.rollouts import generate_rollouts
from tests.tiny import tiny_llama


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recompute_matches_the_generators_own_entropies(tiny_tok, temperature):
    model = tiny_llama(tiny_tok, hidden=64, seed=3).eval()
    torch.manual_seed(0)
    # prompts of different lengths: left padding and the position ids it implies are exercised
    prompts = [[{"role": "user", "content": q}] for q in ("Hi", "Tom has 3 apples and buys four more", "Add 7 and 5.")] * 2
    r = generate_rollouts(model, tiny_tok, prompts, max_new_tokens=24, temperature=temperature)
    assert (r.completion_mask.sum(-1) > 4).all()
    logp, ent = teacher_forced_B_T(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                   temperature=temperature, rows_per_pass=4)
    assert torch.allclose(logp, r.logprobs_B_T.float(), atol=1e-5)
    assert torch.allclose(ent, r.entropy_B_T.float(), atol=1e-5)
    assert float(ent.max()) > 0.5  # a real distribution, not a degenerate one

    # from bare token ids, as vLLM returns them: the same Rollouts the logits processor built
    p_ids = [ids[m.bool()].tolist() for ids, m in zip(r.prompt_ids, r.prompt_mask)]
    c_ids = [ids[: int(m.sum())].tolist() for ids, m in zip(r.completion_ids, r.completion_mask)]
    again = rollouts_from_token_ids(model, tiny_tok, prompts, p_ids, c_ids, temperature=temperature)
    T = again.completion_ids.size(1)
    assert torch.equal(again.completion_mask, r.completion_mask[:, :T])
    assert torch.allclose(again.entropy_B_T, r.entropy_B_T[:, :T].float(), atol=1e-5)
    assert torch.allclose(again.logprobs_B_T, r.logprobs_B_T[:, :T].float(), atol=1e-5)
    assert again.completions == r.completions


def test_use_vllm_without_vllm_says_what_to_do(tmp_path):
    import importlib.util

    from omniopd.config import build_config
    from omniopd.errors import ConfigError
    from omniopd.train import grpo_args

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the GPU path is exercised instead")
    cfg = build_config(None, {"student.use_vllm": True, "student.vllm_mode": "server"})
    with pytest.raises(ConfigError, match="pip install vllm"):
        grpo_args(cfg, tmp_path)
    assert grpo_args(build_config(None, {}), tmp_path).use_vllm is False
