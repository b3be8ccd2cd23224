"""`omniopd report`, `inspect`, `export` and `--log-completions` on a small real run (tests/report_run.py).

What is checked against what: the report's forks against episodes.sqlite read directly, the
per-step mean π̂ of the forks against metrics.jsonl, the export's rows and sample ids against
the recorded episodes and the stored samples, the completion-log tables against TRL's parquet
and the tensorboard event file. The browser test (test_report_browser.py) checks the pages.
"""

from __future__ import annotations

import json
import shutil

import pytest

from cache.episodes import load_episodes, sample_ids
from cache.store import SampleStore
from omniopd.cli import main
from omniopd.errors import ReportError
from omniopd.export import export, push_to_hub
from omniopd.report import build_report
from omniopd.run_data import RunData, read_metrics
from tests.report_run import MID_RUN, run_config, tiny_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def recorded(run_dir) -> dict:
    return dict(load_episodes(run_dir))


def test_forks_match_the_recorded_episodes_and_the_metrics(run_dir):
    eps = recorded(run_dir)
    metrics = {int(r["step"]): r for r in read_metrics(run_dir / "metrics.jsonl")[0]}
    with RunData.open(run_dir) as data:
        assert data.steps() == [s + 1 for s in sorted(eps)] == sorted(metrics)
        for step in data.steps():
            forks = data.forks(step)
            chunks = eps[step - 1]["chunks"]
            assert len(forks) == len(chunks) == int(metrics[step]["forks"]) > 0
            # the step numbering is metrics.jsonl's: the forks' mean pihat is that step's reward_mean
            assert sum(f.pihat for f in forks) / len(forks) == pytest.approx(metrics[step]["reward_mean"])
            for f in forks:
                assert f.samples and all(s.stored and s.text for s in f.samples)
                assert f.k == pytest.approx(sum(s.phi for s in f.samples))
                # what phi compared is a prefix of the stored sample
                assert all(s.text.startswith(s.compared) for s in f.samples)
                assert {s.mode for s in f.samples} == {"prefill"} and all(s.cost_usd > 0 for s in f.samples)
        c = data.completion(1, forks[0].completion)
        assert "".join(p for p, sp in zip(c.pieces, c.special) if not sp) == data.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert len(c.entropies) == len(c.token_ids)


def test_report_writes_plots_fork_links_and_teacher_table(run_dir, tmp_path):
    with RunData.open(run_dir) as data:
        result = build_report(data, tmp_path / "report")
        table = data.teacher_table()
    names = {p.stem for p in result.plots}
    assert names == {"pihat", "agreement", "kl", "loss", "length", "spend", "cache", "eval"}, result.missing
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)
    # one inspector page per completion that holds a step's highest- or lowest-pihat fork
    assert result.inspect_pages and all(p.is_file() for p in result.inspect_pages)
    assert len(table) == 1 and table[0]["teacher"] == "anthropic:claude-haiku-4-5" and table[0]["mode"] == "prefill"
    ids = {i for ep in recorded(run_dir).values() for i in sample_ids(ep)}
    assert table[0]["samples"] == len(ids) and table[0]["cost_usd"] > 0


def test_report_while_the_run_trains(run_dir):
    # built from a callback after step 1 logged, with the episode recorder's connection open
    assert MID_RUN["status"].startswith("running or interrupted") and MID_RUN["steps"] == [1]
    assert MID_RUN["metrics"] == 1 and MID_RUN["forks"] > 0 and "pihat" in MID_RUN["plots"]


def test_report_on_a_half_written_metrics_file(run_dir, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(run_dir, live, ignore=shutil.ignore_patterns("final", "checkpoint-*"))
    text = (live / "metrics.jsonl").read_text()
    (live / "metrics.jsonl").write_text(text[: len(text) - 40])  # the last line cut mid-write
    assert main(["report", str(live)]) == 0
    with RunData.open(live) as data:
        assert len(data.metrics) == 1 and "incomplete" in data.problems[0]
        assert data.status().startswith("running or interrupted")
    assert (live / "report" / "index.html").is_file()


def test_report_on_a_replayed_run(run_dir, tmp_path, tiny_tok):
    from omniopd.train import run_train
    from tests.tiny import tiny_llama

    cfg = run_config(tmp_path / "replayed", tmp_path / "teacher.sqlite", cache={"replay": str(run_dir)})
    run_train(cfg, model=tiny_llama(tiny_tok, seed=0), tokenizer=tiny_tok, echo=False)
    with RunData.open(tmp_path / "replayed") as data:
        assert data.replayed_from()
        assert [r["cache_hit_rate"] for r in data.metrics] == [1.0, 1.0]
        assert [f.pihat > 0 for f in data.forks()] and all(s.stored for f in data.forks() for s in f.samples)
        result = build_report(data)
    assert {"cache", "spend", "pihat"} <= {p.stem for p in result.plots}


def test_inspect_prints_and_writes_a_page(run_dir, capsys):
    assert main(["inspect", str(run_dir), "--step", "1", "--width", "140"]) == 0
    out = capsys.readouterr().out
    assert "fork 1: tokens" in out and "teacher 1" in out and "π̂" in out
    pages = list((run_dir / "report" / "inspect").glob("step-1-completion-*.html"))
    assert pages
    with pytest.raises(SystemExit):
        main(["inspect", str(run_dir), "--step", "x"])
    assert main(["inspect", str(run_dir), "--step", "9"]) == 2  # no such step: a clear error, exit 2
    assert "recorded steps: 1, 2" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "hf"])
def test_export_round_trips_every_fork_and_sample(run_dir, tmp_path, fmt):
    from datasets import load_dataset, load_from_disk

    target = tmp_path / ("forks_hf" if fmt == "hf" else f"forks.{fmt}")
    assert main(["export", str(run_dir), "--to", str(target), "--format", fmt]) == 0
    if fmt == "hf":
        ds = load_from_disk(str(target))
    else:
        ds = load_dataset("parquet" if fmt == "parquet" else "json", data_files=str(target), split="train")
    eps = recorded(run_dir)
    assert len(ds) == sum(len(ep["chunks"]) for ep in eps.values())
    recorded_ids = {i for ep in eps.values() for i in sample_ids(ep)}
    exported_ids = {i for row in ds["sample_ids"] for i in row}
    assert exported_ids == recorded_ids and len(recorded_ids) > 0
    with SampleStore(run_dir / "episodes.sqlite", "read-only") as store:
        texts = {uid.hex(): e.sample.text for uid, e in store.by_uid([bytes.fromhex(i) for i in recorded_ids]).items()}
    for row in ds:
        assert row["teacher_texts"] == [texts[i] for i in row["sample_ids"]]
        assert len(row["phi"]) == len(row["teacher_texts"]) == row["n_eff"] and 0 <= row["pihat"] <= 1
        assert row["prompt"] and row["student_chunk"] and row["samples_missing"] == 0


def test_export_refuses_what_it_cannot_do(run_dir, tmp_path, monkeypatch):
    with RunData.open(run_dir) as data:
        with pytest.raises(ReportError, match="--format must be one of"):
            export(data, tmp_path / "x", "csv")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        with pytest.raises(ReportError, match="HF_HUB_OFFLINE is set"):
            push_to_hub(data, "someone/forks")
    plain = tmp_path / "plain.sqlite"
    SampleStore(plain).close()  # a sample cache with no recorded run
    with pytest.raises(ReportError, match="holds no recorded run"):
        RunData.open(plain)
    with pytest.raises(ReportError, match="no such run directory"):
        RunData.open(tmp_path / "nothing")


def test_log_completions_feeds_trl_tables_and_tensorboard(run_dir):
    import pandas as pd
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    eps = recorded(run_dir)
    for step in (1, 2):
        comp = pd.read_parquet(run_dir / "completions" / f"completions_{step:05d}.parquet")  # written by TRL
        assert len(comp) == len(eps[step - 1]["completion_ids"])
        assert {"pihat_mean", "advantage", "forks", "pihat"} <= set(comp.columns)
        assert comp["forks"].sum() == len(eps[step - 1]["chunks"])
        forks = pd.read_parquet(run_dir / "completions" / f"forks_{step:05d}.parquet")
        assert len(forks) == len(eps[step - 1]["chunks"])
        assert sorted(forks["pihat"]) == pytest.approx(sorted(c["pihat"] for c in eps[step - 1]["chunks"]))
    events = next((run_dir / "runs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    assert any(t.startswith("completions") for t in tags) and any(t.startswith("forks") for t in tags)
    fork_tag = next(t for t in tags if t.startswith("forks"))
    text = acc.Tensors(fork_tag)[-1].tensor_proto.string_val[0].decode()
    assert "| step | completion | fork |" in text
    assert json.loads((run_dir / "eval.json").read_text())["n"] == 2


def test_a_file_with_one_run_per_process_reads_as_one_run(run_dir, tmp_path):
    # e.g. one recorded run per rank of a multi-process run: a step's completions run on across them
    from cache.episodes import EpisodeRecorder, encode_episode

    eps = recorded(run_dir)
    with SampleStore(run_dir / "episodes.sqlite", "read-only") as store:
        entries = store.by_uid([bytes.fromhex(i) for ep in eps.values() for i in sample_ids(ep)])
    target = tmp_path / "ranks"
    target.mkdir()
    shutil.copy(run_dir / "config.yaml", target)
    shutil.copytree(run_dir / "tokenizer", target / "tokenizer")
    for rank in (0, 1):
        rec = EpisodeRecorder(target, teacher=None, meta={"rank": rank}, run=f"rank{rank}")
        for step, ep in eps.items():
            rec.store.put_episode(rec.run, step, encode_episode(ep), list(entries.values()))
        rec.close()
    with RunData.open(target / "episodes.sqlite") as data, RunData.open(run_dir) as one:
        assert data.steps() == one.steps()
        n = one.completions_in(1)
        assert data.completions_in(1) == 2 * n
        assert len(data.forks(1)) == 2 * len(one.forks(1))
        assert [f.pihat for f in data.forks(1) if f.completion >= n] == [f.pihat for f in one.forks(1)]


def test_metrics_reader_skips_bad_lines_and_names_them(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "kl": 0.1}\nnot json\n{"kl": 2}\n{"step": 2, "kl": 0.2}\n{"step": 3, "k')
    rows, problems = read_metrics(p)
    assert [r["step"] for r in rows] == [1, 2]
    assert problems == ["metrics.jsonl line 2: not JSON; skipped", "metrics.jsonl line 3: no 'step' field; skipped",
                        "metrics.jsonl line 5: the last line is incomplete (the run is still writing it); skipped"]


def test_report_of_a_run_without_episodes_draws_from_the_metrics(run_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("metrics.jsonl", "config.yaml"):
        shutil.copy(run_dir / name, bare)
    with RunData.open(bare) as data:
        result = build_report(data)
        assert data.steps() == [] and data.teacher_table() == []
    assert "pihat" in {p.stem for p in result.plots}  # min/mean/max from metrics.jsonl
    assert any("no episodes.sqlite" in p for p in result.problems)
    assert "No recorded forks" in result.index.read_text()
