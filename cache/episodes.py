"""Recorded episodes: every training step saved with the run, so it can be replayed offline.

A run directory gets `episodes.sqlite` (the same schema as the sample cache). Each step's
episode — prompts, prompt/completion token ids, behaviour log-probabilities, entropies, fork
starts, teacher sample ids, k, N_eff, π̄, π̂, rewards, whatever the pipeline puts in the dict —
is stored as one compact blob, **together with the teacher samples it used**, in one
transaction. The run file therefore replays on its own: no provider, no network, no shared
cache needed (and `omniopd cache export` moves it like any cache).

Blob format (`encode_episode`): zlib over `b"OPE1" + u32 json length + JSON skeleton + raw
arrays`. Every list of numbers (and every numpy array) becomes a typed array — int32/int64,
float32 when that is lossless, else float64 — so token ids and log-probabilities cost 4
bytes each, and decoding gives back exactly what was recorded (lists stay lists, arrays
stay arrays).

Replay: `open_replay(path)` accepts a run directory or a cache file holding one run's
episodes; `Replay.episodes()` yields `(step, episode)`; `Replay.teacher()` is a read-only
`CachedTeacher` with no inner teacher and the recorded teacher identity, so requests the
pipeline rebuilds from the recorded rollouts hit the recorded samples, and anything else is a
`CacheMissError` (the pipeline skips that fork, or fails under `--strict-replay`).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cache.store import SampleStore
from cache.teacher import CachedTeacher
from omniopd.errors import CacheError, ReplayError

EPISODES_FILE = "episodes.sqlite"
SAMPLE_ID_FIELDS = ("sample_ids", "teacher_sample_ids")
_MAGIC = b"OPE1"
_NODE = "\x00arr"  # marks an array placeholder in the JSON skeleton


# --- codec ---------------------------------------------------------------------------------
def _pack_numbers(values: Any, arrays: list[bytes], shape: list[int] | None, offset: list[int]) -> dict[str, Any]:
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
        kind = "b"
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.int32) if arr.size == 0 or (arr.min() >= -(2**31) and arr.max() < 2**31) else arr.astype(np.int64)
        kind = "i"
    else:
        wide = arr.astype(np.float64)
        narrow = wide.astype(np.float32)
        arr = narrow if np.array_equal(narrow.astype(np.float64), wide, equal_nan=True) else wide
        kind = "f"
    raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    node = {_NODE: offset[0], "n": len(raw), "dt": arr.dtype.newbyteorder("<").str, "k": kind}
    if shape is not None:
        node["shape"] = shape
    arrays.append(raw)
    offset[0] += len(raw)
    return node


def _is_number_list(value: Any) -> bool:
    if not value:
        return False
    kinds = {type(v) for v in value}
    return kinds <= {int, float} or kinds <= {bool}


def _walk_encode(value: Any, arrays: list[bytes], offset: list[int]) -> Any:
    if isinstance(value, dict):
        return {str(k): _walk_encode(v, arrays, offset) for k, v in value.items()}
    if isinstance(value, np.ndarray) or (hasattr(value, "__array__") and not isinstance(value, (list, tuple, str))):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return _pack_numbers(arr.reshape(-1), arrays, list(arr.shape), offset)
        return _walk_encode(arr.tolist(), arrays, offset)
    if isinstance(value, (list, tuple)):
        if _is_number_list(value):
            return _pack_numbers(list(value), arrays, None, offset)
        return [_walk_encode(v, arrays, offset) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ReplayError(f"episode field of type {type(value).__name__} cannot be recorded; use lists, numbers, strings or arrays")


def encode_episode(episode: dict[str, Any]) -> bytes:
    """Compact, lossless bytes for one step's episode (see the module docstring)."""
    arrays: list[bytes] = []
    skeleton = _walk_encode(episode, arrays, [0])
    head = json.dumps(skeleton, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return zlib.compress(_MAGIC + struct.pack("<I", len(head)) + head + b"".join(arrays), 6)


def _walk_decode(value: Any, data: memoryview) -> Any:
    if isinstance(value, dict):
        if _NODE in value:
            start = value[_NODE]
            arr = np.frombuffer(data[start : start + value["n"]], dtype=np.dtype(value["dt"])).astype(np.dtype(value["dt"]).newbyteorder("="))
            if value["k"] == "b":
                arr = arr.astype(bool)
            if "shape" in value:
                return arr.reshape(value["shape"]).copy()
            return arr.tolist()
        return {k: _walk_decode(v, data) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk_decode(v, data) for v in value]
    return value


def decode_episode(blob: bytes) -> dict[str, Any]:
    try:
        raw = zlib.decompress(blob)
    except zlib.error as exc:
        raise ReplayError(f"a recorded episode is damaged ({exc}); run `omniopd cache verify` on the run's {EPISODES_FILE}") from exc
    if raw[:4] != _MAGIC:
        raise ReplayError("a recorded episode has an unknown format (written by a newer omniopd?); upgrade omniopd")
    (n,) = struct.unpack("<I", raw[4:8])
    skeleton = json.loads(raw[8 : 8 + n].decode("utf-8"))
    return _walk_decode(skeleton, memoryview(raw)[8 + n :])


def sample_ids(episode: Any, fields: tuple[str, ...] = SAMPLE_ID_FIELDS) -> list[str]:
    """Every teacher sample id (`cache_id`) found under a key in `fields`, at any depth.

    The pipeline's episode lists them per chunk (`chunks[i]['sample_ids']`); ids that are
    None (a teacher used without a cache) are skipped.
    """
    out: list[str] = []

    def ids(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                ids(x)

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                (ids if k in fields else walk)(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(episode)
    return out


# --- recording -----------------------------------------------------------------------------
def episodes_path(path: str | Path) -> Path:
    """A run directory's episode file, or `path` itself when it is a file."""
    p = Path(path).expanduser()
    return p / EPISODES_FILE if p.is_dir() or not p.suffix else p


class EpisodeRecorder:
    """The pipeline's `recorder`: `record_step(step, episode)` stores one step durably.

    `teacher` (the run's `CachedTeacher`) supplies the samples named in
    the episode's `sample_ids` lists, which are copied into the run file with the episode.
    `meta` is stored with the run (the teacher identity is added: replay needs it to rebuild
    cache keys without constructing the teacher).
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        teacher: CachedTeacher | None,
        meta: dict[str, Any] | None = None,
        run: str = "run",
        rank: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = episodes_path(run_dir)
        self.teacher = teacher
        self.run = run
        self.rank = rank  # the process's rank in a multi-process run: each records its own rollouts
        self.store = SampleStore(self.path, "read-write", clock=clock)
        full_meta = dict(meta or {})
        if teacher is not None:
            full_meta["teacher"] = {"spec": teacher.spec, "identity": teacher.identity()}
        self.store.put_run(run, full_meta)
        self.missing_samples = 0

    def record_step(self, step: int, episode: dict[str, Any]) -> None:
        ids = sample_ids(episode)
        entries = list(self.teacher.entries_for(ids).values()) if (ids and self.teacher is not None) else []
        self.missing_samples += len(set(ids)) - len(entries)
        self.store.put_episode(self.run, step, encode_episode(episode), entries, rank=self.rank)

    def close(self) -> None:
        self.store.close()


# --- replay ----------------------------------------------------------------------------------
class Replay:
    """One recorded run, opened read-only for offline replay."""

    def __init__(self, path: str | Path) -> None:
        file = episodes_path(path)
        if not file.is_file():
            raise ReplayError(f"--replay {path}: no recorded episodes ({file} does not exist); pass a run directory trained with omniopd, or its {EPISODES_FILE}")
        try:
            self.store = SampleStore(file, "read-only")
        except CacheError as exc:
            raise ReplayError(f"--replay {path}: {exc}") from exc
        runs = self.store.runs()
        if not runs:
            self.store.close()
            raise ReplayError(f"--replay {path}: {file} holds no recorded run (a plain sample cache?); pass the run directory that recorded the episodes")
        if len(runs) > 1:
            self.store.close()
            raise ReplayError(f"--replay {path}: {file} holds {len(runs)} runs ({', '.join(r for r, _, _ in runs)}); pass one run's directory")
        self.run, _, self.meta = runs[0]
        self.path = file

    @property
    def identity(self) -> dict[str, Any] | None:
        return (self.meta.get("teacher") or {}).get("identity")

    def steps(self) -> list[int]:
        return self.store.episode_steps(self.run)

    def entries(self) -> list[tuple[int, int]]:
        """(step, rank) of every recorded episode: a multi-process run recorded one per process per step."""
        return self.store.episode_entries(self.run)

    def episode(self, step: int, rank: int = 0) -> dict[str, Any]:
        blob = self.store.episode_blob(self.run, step, rank)
        if blob is None:
            raise ReplayError(f"--replay {self.path}: step {step} (rank {rank}) was not recorded")
        return decode_episode(blob)

    def episodes(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for step, blob in self.store.episode_blobs(self.run):
            yield step, decode_episode(blob)

    def teacher(self) -> CachedTeacher:
        """A teacher that serves only the recorded samples (no provider, no network)."""
        if self.identity is None:
            raise ReplayError(f"--replay {self.path}: the run did not record its teacher identity, so its samples cannot be matched")
        spec = (self.meta.get("teacher") or {}).get("spec")
        return CachedTeacher(None, self.path, "read-only", identity=self.identity, spec=spec)

    def close(self) -> None:
        self.store.close()


def load_episodes(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(step, episode)` of the run recorded at `path` (a run directory or an episodes/cache file)."""
    replay = Replay(path)
    try:
        yield from replay.episodes()
    finally:
        replay.close()
