"""The embedded defaults' *shapes* run end to end under a memory bound.

`omniopd train` with no config file once died of memory at step 1 while every test passed: the
tests shrank G, forks and continuation length. This test keeps every shape knob at its embedded
default (G = 4 x 2 prompts, 256 new tokens, up to 10 forks of 50 tokens per completion, one
teacher continuation per fork to the end of the answer, imitated as an appended row) on a small
in-process model whose activations make a one-batch step cost several GiB, and bounds the
step's resident-memory high-water mark well below that — so a change of default, or a learner
that forwards the whole batch again, fails here before it reaches a user.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omniopd.config import build_config
from omniopd.memory import activation_bytes_per_token
from omniopd.train import run_train
from providers.local import LocalTeacher
from tests.tiny import tiny_llama

BOUND_GIB = 1.75


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


@pytest.mark.slow
def test_default_shapes_train_one_step_under_a_memory_bound(tmp_path, tiny_tok):
    data = tmp_path / "d.jsonl"
    qs = ["Tom has 3 apples and buys 5 more. How many?", "Add 7 and 5, then multiply by 3.",
          "The train travels 60 miles per hour for 3 hours.", "Natalia sold 48 clips in April."]
    data.write_text("\n".join(json.dumps({"question": q}) for q in qs))
    # the OmniOPD signal's shapes (the default recipe, sft, buys one solution per prompt: no forks to grow)
    cfg = build_config(None, {"method.name": "omniopd", "data.path": str(data), "learner.max_steps": 1, "output.dir": str(tmp_path / "run"),
                              "output.save_steps": 0})
    d = build_config(None, {"method.name": "omniopd"})  # the embedded defaults this test is about
    assert (cfg.student.generations, cfg.learner.prompts_per_step, cfg.student.max_new_tokens) == \
        (d.student.generations, d.learner.prompts_per_step, d.student.max_new_tokens)
    assert cfg.method.fork_imitation == d.method.fork_imitation > 0
    # wide enough that activations dominate: ~0.4 MB a token, so a one-batch step would need > 2 GiB
    student = tiny_llama(tiny_tok, hidden=512, layers=6, intermediate=2048, heads=8)
    teacher = LocalTeacher(tiny_llama(tiny_tok, hidden=64, seed=1), tiny_tok, spec="local:tiny-teacher")
    per_token = activation_bytes_per_token(student.config)
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib("VmRSS")
    result = run_train(cfg, model=student, tokenizer=tiny_tok, teacher=teacher, echo=False)
    peak_gib = (_kib("VmHWM") - before) / 2**20
    assert result.steps == 1
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["forks"] >= 8 and row["imitation_rows"] == row["forks"]  # the default shapes really ran
    # one batch pads every row to at least the longest completion (256): a lower bound on its activations
    one_batch_gib = (8 + row["imitation_rows"]) * cfg.student.max_new_tokens * per_token / 2**30
    assert one_batch_gib > BOUND_GIB  # a one-batch learner would not fit under the bound
    assert row["microbatches"] > 1
    assert peak_gib < BOUND_GIB, f"one default-shaped step peaked at +{peak_gib:.2f} GiB"
