"""`omniopd export`: the teacher data a run bought, as a dataset with one row per audited fork.

Each row is one fork of one recorded step: the prompt, the student's text before the fork
(`prefix`), the student's chunk, the teacher's continuations (`teacher_texts`, full text as
stored, and `teacher_compared`, the part phi compared), phi for each, k, N_eff, π̄, π̂, who
wrote each sample and in which mode, tokens and cost, and the sample ids (the cache's stable
uids, so a row can be traced back to `episodes.sqlite` or to a shared cache).

Formats: `parquet` (one file; `datasets.load_dataset("parquet", data_files=...)`), `jsonl`
(one file; `load_dataset("json", ...)`), `hf` (a `save_to_disk` directory; `load_from_disk`).
`--push-to-hub REPO` uploads the dataset where a hub is reachable and fails with a clear
`ReportError` when it is not (HF_HUB_OFFLINE set, or no connection).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omniopd.errors import ReportError
from omniopd.run_data import Fork, RunData, prompt_text

FORMATS = ("parquet", "jsonl", "hf")


def fork_row(run: str, f: Fork) -> dict[str, Any]:
    """One fork as a flat, typed row (lists stay lists; missing numbers are None)."""
    return {
        "run": run,
        "step": f.step,
        "episode_step": f.episode_step,
        "completion": f.completion,
        "fork": f.index,
        "start_token": f.start,
        "chunk_tokens": f.length,
        "prompt": prompt_text(f.prompt),
        "prompt_messages": json.dumps(f.prompt, ensure_ascii=False, default=str),
        "prefix": f.prefix,
        "student_chunk": f.student_text,
        "teacher_texts": [s.text for s in f.samples],
        "teacher_compared": [s.compared for s in f.samples],
        "phi": [None if s.phi is None else float(s.phi) for s in f.samples],
        "k": f.k,
        "n_eff": f.n_eff,
        "pibar": f.pibar,
        "pihat": f.pihat,
        "teachers": [s.teacher for s in f.samples],
        "teacher_models": [s.model for s in f.samples],
        "modes": [s.mode for s in f.samples],
        "exact": [bool(s.exact) for s in f.samples],
        "input_tokens": [float(s.input_tokens) for s in f.samples],
        "output_tokens": [float(s.output_tokens) for s in f.samples],
        "cost_usd": f.cost_usd,
        "sample_ids": [s.id or "" for s in f.samples],
        "samples_missing": sum(not s.stored for s in f.samples),
    }


def fork_rows(data: RunData) -> Iterator[dict[str, Any]]:
    name = Path(data.name).name
    for step in data.steps():
        for f in data.forks(step):
            yield fork_row(name, f)


def _features():
    from datasets import Features, Sequence, Value

    s, i, f, b = Value("string"), Value("int64"), Value("float64"), Value("bool")
    return Features({
        "run": s, "step": i, "episode_step": i, "completion": i, "fork": i, "start_token": i, "chunk_tokens": i,
        "prompt": s, "prompt_messages": s, "prefix": s, "student_chunk": s, "teacher_texts": Sequence(s),
        "teacher_compared": Sequence(s), "phi": Sequence(f), "k": f, "n_eff": i, "pibar": f, "pihat": f,
        "teachers": Sequence(s), "teacher_models": Sequence(s), "modes": Sequence(s), "exact": Sequence(b),
        "input_tokens": Sequence(f), "output_tokens": Sequence(f), "cost_usd": f, "sample_ids": Sequence(s),
        "samples_missing": i,
    })


def to_dataset(data: RunData):
    """The forks of a run as a `datasets.Dataset` (fixed schema, also when a run has no fork)."""
    from datasets import Dataset

    rows = list(fork_rows(data))
    if not rows:
        raise ReportError(f"{data.name}: no audited fork recorded (no episodes, or the run trained no step yet); nothing to export")
    return Dataset.from_list(rows, features=_features())


def export(data: RunData, to: str | Path, fmt: str = "parquet") -> tuple[Path, int]:
    """Write the fork dataset to `to` in `fmt`; returns (path written, rows)."""
    if fmt not in FORMATS:
        raise ReportError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    ds = to_dataset(data)
    out = Path(to).expanduser()
    if fmt == "hf":
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ReportError(f"--to {out}: exists and is not an empty directory; --format hf writes a save_to_disk directory")
        ds.save_to_disk(str(out))
        return out, len(ds)
    if out.is_dir() or str(to).endswith(("/", "\\")):
        out = out / f"forks.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        ds.to_parquet(str(out))
    else:
        ds.to_json(str(out), lines=True, force_ascii=False)
    return out, len(ds)


def push_to_hub(data: RunData, repo_id: str, private: bool = True) -> str:
    """Upload the fork dataset to the Hugging Face Hub; a clear ReportError when no hub is reachable."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ReportError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so no hub is reachable; unset it on a machine "
                          "with a hub connection and a token (huggingface-cli login), or export with --to and copy the file")
    ds = to_dataset(data)
    try:
        ds.push_to_hub(repo_id, private=private)
    except Exception as exc:  # network, auth, permission: all end the same way for the user
        raise ReportError(f"--push-to-hub {repo_id}: the upload failed ({type(exc).__name__}: {exc}); check the connection "
                          "and your token (huggingface-cli login), or export with --to and upload the file yourself") from exc
    return repo_id
