"""The run directory's rules (`omniopd.run_dir`), decided before anything is loaded or written."""

import pytest

from omniopd.errors import ConfigError
from omniopd.run_dir import RunDir


def _run(tmp_path, steps=(), final=False, logged=0):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("".join(f'{{"step": {i}}}\n' for i in range(1, logged + 1)))
    for s in steps:
        (out / f"checkpoint-{s}").mkdir()
        (out / f"checkpoint-{s}" / "trainer_state.json").write_text("{}")  # transformers writes it last
    if final:
        (out / "final").mkdir()
        (out / "final" / "config.json").write_text("{}")
    return out


def test_fresh_runs_never_overwrite_and_resume_needs_a_checkpoint(tmp_path):
    assert RunDir.open(tmp_path / "new", resume=False, max_steps=3).resume_from is None
    out = _run(tmp_path, steps=(1, 2), logged=2)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        RunDir.open(out, resume=False, max_steps=3)
    rd = RunDir.open(out, resume=True, max_steps=3)
    assert rd.resume_from == out / "checkpoint-2" and rd.done_steps == 2 and not rd.finished
    with pytest.raises(ConfigError, match="no checkpoint"):
        RunDir.open(tmp_path / "missing", resume=True, max_steps=3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        RunDir.open(tmp_path / "file", resume=False, max_steps=3)


def test_a_finished_run_is_recognised_and_a_larger_max_steps_continues(tmp_path):
    out = _run(tmp_path, steps=(2,), final=True, logged=2)
    assert RunDir.open(out, resume=True, max_steps=2).finished
    assert RunDir.open(out, resume=True, max_steps=1).finished
    more = RunDir.open(out, resume=True, max_steps=5)
    assert not more.finished and more.resume_from == out / "checkpoint-2"


def test_a_final_only_run_is_finished_but_cannot_be_extended(tmp_path):
    out = _run(tmp_path, final=True, logged=3)  # --save-steps 0: no checkpoint
    assert RunDir.open(out, resume=True, max_steps=3).finished
    with pytest.raises(ConfigError, match=r"saved final/ only.*--student"):
        RunDir.open(out, resume=True, max_steps=4)


def test_a_checkpoint_cut_off_mid_save_is_skipped(tmp_path):
    """A process killed while saving (e.g. for memory) leaves a checkpoint without trainer_state.json:
    --resume continues from the last complete one."""
    out = _run(tmp_path, steps=(1, 2), logged=3)
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "model.safetensors").write_text("partial")
    rd = RunDir.open(out, resume=True, max_steps=5)
    assert rd.resume_from == out / "checkpoint-2" and rd.done_steps == 2
