"""`--data`: any `datasets` source, built locally here (parquet, CSV, JSON, a `save_to_disk` dir), and
the bounded JSONL reader (row size limit, strict UTF-8, memory flat in the file size)."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from omniopd.cli import main
from omniopd.data import iter_prompts, load_prompts, prompt_dataset
from omniopd.errors import DataError

ROWS = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]


@pytest.fixture
def tiny_dirs(tmp_path, tiny_tok):
    from tests.tiny import tiny_llama

    dirs = []
    for name, seed in (("student", 0), ("teacher", 1)):
        tiny_llama(tiny_tok, seed=seed).save_pretrained(tmp_path / name)
        tiny_tok.save_pretrained(tmp_path / name)
        dirs.append(tmp_path / name)
    return dirs


def _train(student, teacher, out, *data_args):
    return main(["train", "--student", str(student), "--teacher", f"local:{teacher}", "--output", str(out),
                 "--similarity", "edit", "--generations", "2", "--prompts-per-step", "1", "--max-new-tokens", "12",
                 "--chunk-tokens", "4", "--chunks-per-completion", "1", "--teacher-samples", "2", "--max-steps", "1",
                 "--save-steps", "100", "--cache-mode", "off", "--answer-field", "answer", *data_args])


def test_train_runs_a_step_on_a_parquet_file_and_on_a_save_to_disk_dir(tmp_path, tiny_dirs):
    from datasets import Dataset, DatasetDict

    student, teacher = tiny_dirs
    Dataset.from_list(ROWS).to_parquet(str(tmp_path / "p.parquet"))
    assert _train(student, teacher, tmp_path / "run-parquet", "--data", str(tmp_path / "p.parquet")) == 0
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:2])}).save_to_disk(str(tmp_path / "dd"))
    assert _train(student, teacher, tmp_path / "run-disk", "--data", str(tmp_path / "dd"), "--split", "train") == 0
    for run in ("run-parquet", "run-disk"):
        rows = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1] and (tmp_path / run / "final" / "config.json").is_file()


def test_local_formats_and_trl_conversational_prompts(tmp_path):
    from datasets import Dataset

    Dataset.from_list(ROWS).to_csv(str(tmp_path / "p.csv"))
    (tmp_path / "p.json").write_text(json.dumps(ROWS))
    for f in ("p.csv", "p.json"):
        rows = load_prompts(str(tmp_path / f), answer_field="answer")
        assert [r["prompt"][-1]["content"] for r in rows] == [r["question"] for r in ROWS]
        assert rows[2]["answer"] == "4"
    chat = [{"prompt": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}]}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in chat) + "\n")
    Dataset.from_list(chat).to_parquet(str(tmp_path / "c.parquet"))
    for f in ("c.jsonl", "c.parquet"):
        assert load_prompts(str(tmp_path / f), prompt_field="prompt") == [{"prompt": chat[0]["prompt"], "answer": None}]
    with pytest.raises(DataError, match=r"c\.jsonl:1: field 'prompt' must be text or a list"):
        (tmp_path / "c.jsonl").write_text(json.dumps({"prompt": [{"role": "user"}]}) + "\n")
        load_prompts(str(tmp_path / "c.jsonl"), prompt_field="prompt")
    with pytest.raises(DataError, match="no split 'validation'"):
        Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "d1"))
        from datasets import DatasetDict

        DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "d2"))
        load_prompts(str(tmp_path / "d2"), split="validation")
    assert len(load_prompts(str(tmp_path / "d1"))) == len(ROWS)  # a plain Dataset: no split to choose


def test_a_hub_name_offline_fails_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"openai/gsm8k: not a local file or directory.*hub cannot be reached"):
        load_prompts("openai/gsm8k", config="main", split="train")
    from tests.test_fail_fast import omniopd

    r = omniopd("train", "--data", "openai/gsm8k", "--data-config", "main", "--output", str(tmp_path / "run"))
    assert r.returncode == 2 and "hub cannot be reached" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_oversized_row_and_undecodable_bytes_name_file_and_line(tmp_path):
    f = tmp_path / "big.jsonl"
    f.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"question": "' + b"x" * 5000 + b'"}\n')
    with pytest.raises(DataError, match=r"big\.jsonl:2: row longer than 1000 bytes; raise --data-max-row-bytes"):
        load_prompts(str(f), max_row_bytes=1000)
    assert len(load_prompts(str(f), max_row_bytes=10_000)) == 2
    f.write_bytes(b"x" * 3000)  # one line, no newline at all
    with pytest.raises(DataError, match=r"big\.jsonl:1: row longer than 1000 bytes"):
        load_prompts(str(f), max_row_bytes=1000)
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"question": "caf\u00e9?"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not UTF-8 \(byte 0xe9"):
        load_prompts(str(bad))


def _peak_bytes_streaming(path) -> int:
    tracemalloc.start()
    n = sum(1 for _ in iter_prompts(str(path), answer_field="answer"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert n > 0
    return peak


def test_memory_stays_flat_in_the_file_size(tmp_path):
    """Streaming 10x more rows must not take 10x the memory (it takes about the same)."""
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    line = json.dumps({"question": "How many apples does Tom have if he buys 3 bags of 7?", "answer": "21"}) + "\n"
    small.write_text(line * 1_000)
    large.write_text(line * 10_000)
    peak_small, peak_large = _peak_bytes_streaming(small), _peak_bytes_streaming(large)
    assert peak_large < 2 * peak_small + 256_000, (peak_small, peak_large)
    # the training set: rows written to a memory-mapped Arrow file, not kept as Python objects
    tracemalloc.start()
    ds = prompt_dataset(tmp_path / "arrow", str(large), answer_field="answer")
    peak_ds = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(ds) == 10_000 and ds[9_999]["answer"] == "21"
    assert peak_ds < large.stat().st_size, (peak_ds, large.stat().st_size)
