"""Episodes keyed by (run, step, rank): every process's rollouts kept, old files migrated."""

from __future__ import annotations

import sqlite3

from cache.episodes import EpisodeRecorder, Replay, decode_episode, encode_episode
from cache.schema import SCHEMA_VERSION, migrate, read_version
from cache.store import SampleStore
from omniopd.run_cache import ReplayRollouts


def _episode(tag: int) -> dict:
    return {"prompts": [[{"role": "user", "content": f"q{tag}"}]], "prompt_ids": [[1, 2, tag]],
            "completion_ids": [[tag, tag + 1]], "behaviour_logprobs": [[-0.5, -1.0]], "entropies": [[1.0, 2.0]],
            "fork_starts": [[]], "chunks": []}


def test_two_ranks_record_the_same_step_without_losing_either(tmp_path):
    for rank in (0, 1):
        rec = EpisodeRecorder(tmp_path / "run", teacher=None, rank=rank)
        for step in (0, 1):
            rec.record_step(step, _episode(10 * rank + step))
        rec.close()
    replay = Replay(tmp_path / "run")
    try:
        assert replay.steps() == [0, 1]
        assert replay.entries() == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert replay.episode(1, rank=1)["completion_ids"] == [[11, 12]]
        # replay deals the entries round-robin: one process sees all four, two processes each see their own
        assert ReplayRollouts(replay, None, 1).entries == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert ReplayRollouts(replay, None, 1, rank=1, world=2).entries == [(0, 1), (1, 1)]
    finally:
        replay.close()


def test_a_version_4_file_migrates_its_episodes_to_rank_0(tmp_path):
    path = tmp_path / "episodes.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    migrate(conn, 0, target=4)
    conn.execute("INSERT INTO runs VALUES ('run', 1.0, '{}')")
    conn.execute("INSERT INTO episodes VALUES ('run', 3, 2.0, ?)", (sqlite3.Binary(encode_episode(_episode(7))),))
    conn.execute("COMMIT")
    conn.close()
    with SampleStore(path) as store:
        assert read_version(store.conn) == SCHEMA_VERSION == 6
        assert store.episode_entries("run") == [(3, 0)]
        assert decode_episode(store.episode_blob("run", 3))["completion_ids"] == [[7, 8]]
        assert store.verify() == []
