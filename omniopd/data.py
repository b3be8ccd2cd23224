"""Prompt sets from any `datasets` source, read as a bounded stream.

`--data` is one of:
- a local JSONL file (`.jsonl`, `.ndjson`): read by our own streaming reader, one line at a
  time with a per-row size limit (`--data-max-row-bytes`, default 1 MB), strict UTF-8; a row
  that is too long, not UTF-8, not JSON or lacks the prompt field is a `DataError` naming
  `file:line`, found without reading the rest of the file into memory;
- a local `.json`, `.parquet`, `.csv` or `.tsv` file, or a directory of such files (`datasets`'
  packaged builders), or a directory written by `save_to_disk` (`--split`);
- a `datasets` name (`--data openai/gsm8k --data-config main --split train`), loaded with
  `load_dataset`: it needs the hub, or the dataset in the local `datasets` cache; offline it
  fails with a message saying so;
- `demo`: the small packaged set.

Every row becomes `{"prompt": [{"role": ..., "content": ...}, ...], "answer": ...}` — TRL's
conversational prompt format, so the student's chat template (or, for a base model, the
plain-text format of `omniopd.evaluate.render_prompts`) is applied at rollout time. The prompt
field (`--prompt-field`) holds either text or, as in TRL's conversational datasets, a list of
messages. Nothing is silently skipped.

`iter_prompts` streams rows; `load_prompts` lists them (eval, tests); `prompt_dataset` writes
the stream into an Arrow file under a directory the caller owns, so a training set's memory
stays flat in its size (the rows are memory-mapped, not held as Python objects).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

from omniopd.errors import DataError

DEFAULT_MAX_ROW_BYTES = 1_000_000
JSONL_SUFFIXES = (".jsonl", ".ndjson")
BUILDER_FOR_SUFFIX = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


def demo_path() -> Path:
    """The small prompt set shipped inside the package (GSM8K-style word problems)."""
    return Path(str(resources.files("omniopd") / "data" / "demo_prompts.jsonl"))


def _messages(value: Any, where: str, field: str, system_prompt: str | None, max_chars: int) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field {field!r} must be a non-empty string or a list of messages")
        if len(value) > max_chars:
            raise DataError(f"{where}: field {field!r} is longer than {max_chars} characters (--data-max-row-bytes)")
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                   and isinstance(m.get("content"), str) for m in value):
        messages = [{"role": m["role"], "content": m["content"]} for m in value]  # TRL's conversational format
        if sum(len(m["content"]) for m in messages) > max_chars:
            raise DataError(f"{where}: field {field!r} is longer than {max_chars} characters (--data-max-row-bytes)")
    else:
        raise DataError(f"{where}: field {field!r} must be text or a list of {{'role', 'content'}} messages; "
                        f"got {type(value).__name__}")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def _row(obj: dict[str, Any], where: str, prompt_field: str, answer_field: str | None, system_prompt: str | None,
         max_chars: int, columns_hint: str) -> dict[str, Any]:
    if prompt_field not in obj:
        raise DataError(f"{where}: missing field {prompt_field!r} (set --prompt-field; {columns_hint}: "
                        f"{', '.join(obj) or 'nothing'})")
    if answer_field and answer_field not in obj:
        raise DataError(f"{where}: missing field {answer_field!r} (set --answer-field or leave it unset)")
    answer = obj.get(answer_field) if answer_field else None
    return {"prompt": _messages(obj[prompt_field], where, prompt_field, system_prompt, max_chars),
            "answer": None if answer is None else str(answer)}


def iter_jsonl(path: Path, prompt_field: str, answer_field: str | None, system_prompt: str | None,
               max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file, one line in memory at a time (at most `max_row_bytes` of it)."""
    n = 0
    with path.open("rb") as fh:
        lineno = 0
        while True:
            raw = fh.readline(max_row_bytes + 1)
            if not raw:
                break
            lineno += 1
            where = f"{path}:{lineno}"
            if len(raw) > max_row_bytes and not raw.endswith(b"\n") or len(raw.rstrip(b"\r\n")) > max_row_bytes:
                raise DataError(f"{where}: row longer than {max_row_bytes} bytes; raise --data-max-row-bytes "
                                "if it is meant to be that long")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line); "
                                "re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
            yield _row(obj, where, prompt_field, answer_field, system_prompt, max_row_bytes, "this row has")
            n += 1
    if n == 0:
        raise DataError(f"{path}: no prompts found (empty file?)")


def _load_dataset(path: str, config: str | None, split: str):
    """A `datasets.Dataset` for anything that is not JSONL or `demo` (see the module docstring)."""
    import datasets

    p = Path(path).expanduser()
    try:
        if p.is_dir() and any((p / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{path}: no split {split!r}; available: {', '.join(ds)} (set --split)")
                ds = ds[split]
            return ds
        if p.is_file():
            builder = BUILDER_FOR_SUFFIX.get(p.suffix.lower())
            if builder is None:
                raise DataError(f"--data {path}: unknown file type {p.suffix!r}; use .jsonl, .json, .parquet, .csv, "
                                ".tsv, a `save_to_disk` directory or a `datasets` name")
            kw = {"delimiter": "\t"} if p.suffix.lower() == ".tsv" else {}
            return datasets.load_dataset(builder, data_files=str(p), split="train", **kw)
        return datasets.load_dataset(str(p) if p.is_dir() else path, config, split=split)
    except DataError:
        raise
    except ConnectionError as exc:
        raise DataError(f"--data {path}: not a local file or directory, and the `datasets` hub cannot be reached "
                        f"({exc}); with no network, pass a local file (JSONL, JSON, parquet, CSV) or a "
                        "`save_to_disk` directory") from None
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        if not p.exists() and "/" not in path:
            raise DataError(f"--data {path}: no such file or directory, and no `datasets` dataset of that name ({exc})") from None
        raise DataError(f"--data {path}: `datasets` cannot load it ({exc.__class__.__name__}: {exc}); "
                        "check --data-config and --split") from None


def iter_prompts(path: str, prompt_field: str = "question", answer_field: str | None = None, split: str = "train",
                 limit: int | None = None, system_prompt: str | None = None, *, config: str | None = None,
                 max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[dict[str, Any]]:
    """Rows for training, streamed: see the module docstring. `path='demo'` reads the packaged set."""
    if path == "demo":
        rows = iter_jsonl(demo_path(), "question", answer_field or "answer", system_prompt, max_row_bytes)
    elif (p := Path(path).expanduser()).is_file() and p.suffix.lower() in JSONL_SUFFIXES:
        rows = iter_jsonl(p, prompt_field, answer_field, system_prompt, max_row_bytes)
    elif path.startswith((".", "/", "~")) and not p.exists():
        raise DataError(f"--data {path}: no such file or directory")
    else:
        ds = _load_dataset(path, config, split)
        if prompt_field not in ds.column_names:
            raise DataError(f"{path}: no column {prompt_field!r}; columns: {', '.join(ds.column_names)} (set --prompt-field)")
        label = f"{path}[{split}]"
        rows = (_row(obj, f"{label} row {i}", prompt_field, answer_field, system_prompt, max_row_bytes, "columns")
                for i, obj in enumerate(ds))
    yield from islice(rows, limit)


def load_prompts(path: str, prompt_field: str = "question", answer_field: str | None = None, split: str = "train",
                 limit: int | None = None, system_prompt: str | None = None, *, config: str | None = None,
                 max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> list[dict[str, Any]]:
    """`iter_prompts` as a list (evaluation, tests)."""
    rows = list(iter_prompts(path, prompt_field, answer_field, split, limit, system_prompt, config=config,
                             max_row_bytes=max_row_bytes))
    if not rows:
        raise DataError(f"--data {path}: no prompts found")
    return rows


def prompt_dataset(cache_dir: str | Path, path: str, prompt_field: str = "question", answer_field: str | None = None,
                   split: str = "train", limit: int | None = None, system_prompt: str | None = None, *,
                   config: str | None = None, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES):
    """The rows as a memory-mapped `datasets.Dataset` written under `cache_dir` (which the caller
    deletes when training ends); a bad row raises its `DataError`."""
    import datasets

    kwargs = dict(path=path, prompt_field=prompt_field, answer_field=answer_field, split=split, limit=limit,
                  system_prompt=system_prompt, config=config, max_row_bytes=max_row_bytes)
    features = datasets.Features({"prompt": datasets.List({"role": datasets.Value("string"),
                                                           "content": datasets.Value("string")}),
                                  "answer": datasets.Value("string")})
    try:
        ds = datasets.Dataset.from_generator(_rows_generator, gen_kwargs=kwargs, features=features,
                                             cache_dir=str(cache_dir))
    except datasets.exceptions.DatasetGenerationError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, DataError):
            raise cause from None
        raise
    if len(ds) == 0:
        raise DataError(f"--data {path}: no prompts found")
    return ds


def _rows_generator(**kwargs) -> Iterator[dict[str, Any]]:
    yield from iter_prompts(**kwargs)
