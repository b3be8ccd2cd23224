"""Prompt sets: JSONL files, `datasets` directories, or the packaged demo set.

Every row becomes `{"prompt": [{"role": "user", "content": TEXT}], "answer": ...}` — TRL's
conversational prompt format, so the student's own chat template is applied at rollout time.
A malformed row fails with the file and line number; nothing is silently skipped.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from omniopd.errors import DataError


def demo_path() -> Path:
    """The small prompt set shipped inside the package (GSM8K-style word problems)."""
    return Path(str(resources.files("omniopd") / "data" / "demo_prompts.jsonl"))


def _row(text: Any, answer: Any, where: str, field: str, system_prompt: str | None) -> dict[str, Any]:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field {field!r} must be a non-empty string")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [{"role": "user", "content": text}]
    return {"prompt": messages, "answer": None if answer is None else str(answer)}


def read_jsonl(path: Path, prompt_field: str, answer_field: str | None, limit: int | None, system_prompt: str | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(obj, dict):
                raise DataError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
            if prompt_field not in obj:
                raise DataError(f"{where}: missing field {prompt_field!r} (set --prompt-field; this row has: {', '.join(obj) or 'nothing'})")
            if answer_field and answer_field not in obj:
                raise DataError(f"{where}: missing field {answer_field!r} (set --answer-field or leave it unset)")
            rows.append(_row(obj[prompt_field], obj.get(answer_field) if answer_field else None, where, prompt_field, system_prompt))
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise DataError(f"{path}: no prompts found (empty file?)")
    return rows


def read_dataset_dir(path: Path, split: str, prompt_field: str, answer_field: str | None, limit: int | None, system_prompt: str | None) -> list[dict[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{path}: not a dataset saved with `save_to_disk` ({exc})") from exc
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split {split!r}; available: {', '.join(ds)}")
        ds = ds[split]
    if prompt_field not in ds.column_names:
        raise DataError(f"{path}: no column {prompt_field!r}; columns: {', '.join(ds.column_names)}")
    rows = []
    for i, obj in enumerate(ds):
        rows.append(_row(obj[prompt_field], obj.get(answer_field) if answer_field else None, f"{path}[{split}] row {i}", prompt_field, system_prompt))
        if limit is not None and len(rows) >= limit:
            break
    return rows


def load_prompts(path: str, prompt_field: str = "question", answer_field: str | None = None, split: str = "train",
                 limit: int | None = None, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Rows for training: see the module docstring. `path='demo'` reads the packaged set."""
    if path == "demo":
        return read_jsonl(demo_path(), "question", answer_field or "answer", limit, system_prompt)
    p = Path(path).expanduser()
    if p.is_dir():
        return read_dataset_dir(p, split, prompt_field, answer_field, limit, system_prompt)
    if not p.is_file():
        raise DataError(f"--data {path}: no such file or directory")
    return read_jsonl(p, prompt_field, answer_field, limit, system_prompt)
