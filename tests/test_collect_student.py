"""`omniopd collect` with a student in the loop, on a tiny student saved to disk: solutions collected in a
batch are what `omniopd train --method sft` reads (no live request); `--only-failures` buys only where
the student fails; `--what forks` buys the teacher's continuations at the student's forks, and
`omniopd train --replay COLLECT_DIR/forks` trains on them offline."""

from __future__ import annotations

import json

import pytest

from omniopd.cli import main
from tests.fake_batches import FakeBatchServer

QUESTIONS = ["What is 2 + 3?", "Name a red fruit."]
SHAPE = ["--generations", "2", "--prompts-per-step", "1", "--max-new-tokens", "20", "--chunk-tokens", "5",
         "--chunks-per-completion", "2", "--teacher-samples", "2", "--seed", "1"]


@pytest.fixture
def student(tmp_path, tiny_tok):
    from tests.tiny import tiny_llama

    path = tmp_path / "student"
    tiny_llama(tiny_tok, seed=0).save_pretrained(path)
    tiny_tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("mode", ["batch", "live"])
def test_forks_collected_then_replayed_with_no_teacher(tmp_path, student, monkeypatch, capsys, mode):
    from tests.fake_providers import FakeProviderServer

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    collect = ["collect", "--what", "forks", "--student", str(student), "--teacher", "openai:gpt-4o-mini",
               "--data", str(data), "--cache", str(tmp_path / "cache.sqlite"), "--poll-seconds", "0.01",
               "--collect-dir", str(tmp_path / "collect"), *SHAPE] + (["--batch"] if mode == "batch" else [])
    with (FakeBatchServer() if mode == "batch" else FakeProviderServer()) as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        assert main(collect) == 0
        out = capsys.readouterr().out
        assert "forks have teacher continuations" in out
        answered = int(out.split("forks: ")[-1].split(" of ")[0])
        assert answered > 0
        bought = len(srv.log)
        assert bought > 0 and (mode == "live" or srv.created() == 1)
        # a rerun keeps the recorded rollouts: nothing new to buy, nothing sent
        assert main(collect) == 0
        assert len(srv.log) == bought

        run = tmp_path / "run"
        rc = main(["train", "--method", "omniopd", "--replay", str(tmp_path / "collect" / "forks"), "--student", str(student),
                   "--teacher", "openai:gpt-4o-mini", "--output", str(run), "--similarity", "edit", "--max-steps", "2",
                   "--learning-rate", "0.01", *SHAPE])
        assert rc == 0 and len(srv.log) == bought  # replay: no request reached any API
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert sum(r["forks"] for r in rows) == answered
    assert sum(r.get("teacher_samples", 0) for r in rows) == 2 * answered


def test_only_failures_buys_solutions_only_where_the_student_fails(tmp_path, student, monkeypatch, capsys):
    import omniopd.answers

    rows = [{"question": "What is 2 + 3?", "answer": "5"}, {"question": "What is 4 + 4?", "answer": "8"},
            {"question": "What is 1 + 6?", "answer": "7"}]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the tiny random student answers nonsense; the verifier is told it solved the "8" problem
    calls: list[str] = []

    def judge(prediction: str, gold: str) -> bool:
        calls.append(gold)
        return gold == "8"

    monkeypatch.setattr(omniopd.answers, "is_correct", judge)
    argv = ["collect", "--only-failures", "--student", str(student), "--teacher", "openai:gpt-4o-mini",
            "--data", str(data), "--answer-field", "answer", "--cache", str(tmp_path / "cache.sqlite"),
            "--collect-dir", str(tmp_path / "collect"), "--generations", "2", "--prompts-per-step", "2",
            "--max-new-tokens", "8", "--batch", "--poll-seconds", "0.01"]
    with FakeBatchServer() as srv:
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "fails 2 of 3 prompts" in out and srv.created() == 1
        b = next(iter(srv.batches.values()))
        asked = sorted(r["question"] for r in rows for _, body in b.items
                       if any(r["question"] in (m.get("content") or "") for m in body["messages"]))
        assert asked == ["What is 1 + 6?", "What is 2 + 3?"]
        n_judged = len(calls)
        assert main(argv) == 0  # a rerun reads the recorded verdicts: no sampling, nothing bought
        assert len(calls) == n_judged == 5 and srv.created() == 1  # 2 + 2 answers judged, 1 for the solved one


def test_train_method_sft_on_collected_solutions_sends_no_live_request(tmp_path, student, monkeypatch, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    common = ["--teacher", "openai:gpt-4o-mini", "--data", str(data), "--cache", str(tmp_path / "cache.sqlite"),
              "--teacher-solutions", "2", "--max-new-tokens", "16"]
    with FakeBatchServer() as srv:  # it answers batch routes only: a live request would fail
        for k, v in srv.env().items():
            monkeypatch.setenv(k, v)
        assert main(["collect", "--batch", "--poll-seconds", "0.01", "--collect-dir", str(tmp_path / "collect"),
                     *common]) == 0
        assert srv.created() == 1
        seen = len(srv.log)
        run = tmp_path / "run"
        assert main(["train", "--method", "sft", "--student", str(student), "--output", str(run), "--no-fallback",
                     "--prompts-per-step", "2", "--generations", "2", "--max-steps", "1", "--learning-rate", "0.01",
                     "--save-steps", "0", *common]) == 0
        assert len(srv.log) == seen  # every solution came from the cache
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["teacher_samples"] == 2 * len(QUESTIONS) and row["sft_teacher_rows"] == 2 * len(QUESTIONS)
    assert row["teacher_cost_usd_total"] == 0.0  # served from the cache: nothing paid in training
