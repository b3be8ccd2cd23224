"""Episodes: a lossless compact codec, recording with the run, loading them back for replay."""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
import pytest

from cache.episodes import EPISODES_FILE, EpisodeRecorder, Replay, decode_episode, encode_episode, load_episodes, sample_ids
from cache.store import SampleStore
from cache.teacher import CachedTeacher
from omniopd.errors import CacheMissError, ReplayError
from tests.cache_helpers import CountingTeacher, request


def pipeline_like_episode(rng: np.random.Generator, sample_id_lists) -> dict:
    T = 200
    return {
        "prompts": [[{"role": "user", "content": "What is 2+2?"}]] * 4,
        "prompt_ids": [list(range(5, 17))] * 4,
        "completion_ids": [rng.integers(0, 50_000, T).tolist() for _ in range(4)],
        "behaviour_logprobs": [np.log(rng.uniform(0.01, 1, T)).astype(np.float32).astype(float).tolist() for _ in range(4)],
        "entropies": [rng.uniform(0, 5, T).tolist() for _ in range(4)],  # float64: kept exactly
        "fork_starts": [[3, 60], [], [10], [0]],
        "chunks": [{"row": 0, "start": 3, "length": 50, "student_text": "so 2+2=4", "sample_ids": ids,
                    "teachers": ["t"] * len(ids), "phi": [0.5, 1.0], "k": 1.5, "n_eff": 2, "pibar": 0.01, "pihat": 0.3}
                   for ids in sample_id_lists],
        "flags": [True, False],
        "nan": math.inf,
        "array": np.arange(6, dtype=np.int64).reshape(2, 3),
    }


def test_codec_is_lossless_and_compact():
    ep = pipeline_like_episode(np.random.default_rng(0), [["ab", None]])
    blob = encode_episode(ep)
    back = decode_episode(blob)
    arr = back.pop("array")
    assert isinstance(arr, np.ndarray) and arr.shape == (2, 3) and arr.tolist() == ep.pop("array").tolist()
    assert back == ep
    assert isinstance(back["completion_ids"][0], list)
    as_json = len(json.dumps(ep).encode())
    assert len(blob) < as_json / 2  # token ids and float32 log-probs are stored as 4-byte arrays
    with pytest.raises(ReplayError, match="cannot be recorded"):
        encode_episode({"x": object()})


def test_sample_ids_are_found_per_chunk():
    ep = {"chunks": [{"sample_ids": ["a", "b"]}, {"sample_ids": [None, "c"]}], "other": ["not an id"]}
    assert sample_ids(ep) == ["a", "b", "c"]


def test_recorded_run_replays_alone_with_the_recorded_samples(tmp_path):
    inner = CountingTeacher()
    teacher = CachedTeacher(inner, None, "off")  # even without a cache, the run directory keeps its samples
    run_dir = tmp_path / "run"
    rec = EpisodeRecorder(run_dir, teacher=teacher, meta={"note": "x"})
    rng = np.random.default_rng(1)
    episodes = {}
    for step in range(2):
        got = asyncio.run(teacher.sample(request(f"prefix {step}", 3)))
        episodes[step] = pipeline_like_episode(rng, [[s.cache_id for s in got]])
        episodes[step].pop("array")
        rec.record_step(step, episodes[step])
    rec.record_step(1, episodes[1])  # a resumed run re-records its step: replaced, not duplicated
    rec.close()
    assert rec.missing_samples == 0
    assert (run_dir / EPISODES_FILE).is_file()
    assert dict(load_episodes(run_dir)) == episodes
    assert dict(load_episodes(run_dir / EPISODES_FILE)) == episodes

    replay = Replay(run_dir)
    assert replay.meta["note"] == "x" and replay.identity == inner.identity()
    rt = replay.teacher()
    served = asyncio.run(rt.sample(request("prefix 1", 3)))
    assert [s.cache_id for s in served] == episodes[1]["chunks"][0]["sample_ids"]
    with pytest.raises(CacheMissError):
        asyncio.run(rt.sample(request("prefix 7", 3)))
    rt.close()
    replay.close()
    assert len(inner.calls) == 2


def test_replay_rejects_what_it_cannot_replay(tmp_path):
    with pytest.raises(ReplayError, match="no recorded episodes"):
        Replay(tmp_path / "nothing")
    with SampleStore(tmp_path / "plain.sqlite"):
        pass
    with pytest.raises(ReplayError, match="holds no recorded run"):
        Replay(tmp_path / "plain.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"definitely not sqlite" * 10)
    with pytest.raises(ReplayError, match="not an SQLite database"):
        Replay(tmp_path / "junk.sqlite")


def test_samples_copied_into_the_run_keep_their_origin_and_time(tmp_path):
    cache = tmp_path / "c.sqlite"
    first = CachedTeacher(CountingTeacher(), cache, clock=lambda: 1234.5)
    asyncio.run(first.sample(request("p", 2)))
    first.close()
    teacher = CachedTeacher(CountingTeacher(), cache, clock=lambda: 9999.0)  # a later run, served from the cache
    got = asyncio.run(teacher.sample(request("p", 2)))
    rec = EpisodeRecorder(tmp_path / "run", teacher=teacher)
    rec.record_step(0, {"chunks": [{"sample_ids": [s.cache_id for s in got]}]})
    rec.close()
    teacher.close()
    with SampleStore(tmp_path / "run" / EPISODES_FILE, "read-only") as run_file:
        copied = run_file.by_uid([bytes.fromhex(s.cache_id) for s in got])
    assert [e.created for e in copied.values()] == [1234.5, 1234.5]
    assert {e.sample.teacher for e in copied.values()} == {CountingTeacher.spec}
