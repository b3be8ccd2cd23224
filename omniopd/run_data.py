"""A recorded run, read back: its config, its metrics, and every audited fork with its teacher samples.

`RunData.open(path)` takes a run directory (or its `episodes.sqlite`, or any cache file that
holds recorded runs) and is what `omniopd report`, `inspect` and `export` read. It is written
to be tolerant, because it is pointed at runs that are still going and at files written by
other versions:

- `metrics.jsonl` may end in a half-written line (the run is writing it): that line is
  skipped and said so in `problems`; a bad line elsewhere is skipped and named the same way.
- `episodes.sqlite` is opened read-only (SQLite WAL lets a live writer go on). A file with
  several recorded runs (one per process of a multi-process run, say) is read as one run: the
  episodes of one step are concatenated, completion indices running on across them.
- Fields a recording lacks are derived where they can be (`compared_chars`, what phi saw of
  each sample, from the recorded trim setting) and left empty where they cannot.

Steps: an episode is keyed by the trainer's global step at sampling time (0 for the first
batch). Here a fork's `step` is the optimizer step that batch fed first, `episode step + 1`,
the numbering of `metrics.jsonl` and of the training log line — so `inspect --step 1` shows the
forks whose mean pihat is `reward_mean` of step 1. `episode_step` keeps the stored key.

Token text needs the student's tokenizer: the run's `tokenizer/` (saved at the start of
every run), else `final/`, else the newest `checkpoint-*/`, else the config's student.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import yaml

from cache.episodes import EPISODES_FILE, decode_episode, episodes_path
from cache.store import SampleStore
from omniopd.errors import CacheError, ReplayError, ReportError
from omniopd.scoring import trim_to_chars

METRICS_FILE = "metrics.jsonl"


def train_step(episode_step: int) -> int:
    """The optimizer step a recorded batch fed first (see the module docstring)."""
    return int(episode_step) + 1


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a `metrics.jsonl` and the problems met (skipped lines), never raising on content."""
    p = Path(path)
    if not p.is_file():
        return [], []
    lines = p.read_text(encoding="utf-8", errors="replace").split("\n")
    rows, problems = [], []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            what = "the last line is incomplete (the run is still writing it)" if i == last else "not JSON"
            problems.append(f"{p.name} line {i + 1}: {what}; skipped")
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
        else:
            problems.append(f"{p.name} line {i + 1}: no 'step' field; skipped")
    return rows, problems


@dataclass
class SampleView:
    """One teacher continuation at a fork, as stored, with the phi it scored."""

    id: str | None
    text: str
    compared: str  # the prefix of `text` that phi compared with the student's chunk
    phi: float | None
    teacher: str = ""
    model: str = ""
    exact: bool = True
    mode: str = ""
    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cost_usd: float = 0.0
    finish_reason: str = ""
    stored: bool = True  # False: the sample id is recorded but the sample is not in the file


@dataclass
class Fork:
    """One audited chunk: where it is, what the student wrote, what the teacher wrote, its weight."""

    step: int
    episode_step: int
    completion: int
    index: int  # the fork's number within its completion, in position order
    start: int
    length: int
    prompt: Any
    prefix: str
    student_text: str
    samples: list[SampleView]
    k: float
    n_eff: int
    pibar: float
    pihat: float
    sample_ids: list[str | None] = field(default_factory=list)

    @property
    def phi(self) -> list[float | None]:
        return [s.phi for s in self.samples]

    @property
    def cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.samples)


@dataclass
class Completion:
    """One student completion of a step: its tokens with their entropies and its forks."""

    step: int
    index: int
    prompt: Any
    token_ids: list[int]
    pieces: list[str]  # the text each token adds (joined: the completion)
    special: list[bool]
    entropies: list[float]
    logprobs: list[float]
    forks: list[Fork]


def prompt_text(prompt: Any) -> str:
    """A recorded prompt (chat messages or text) as plain text for display and export."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "\n\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in prompt)
    return json.dumps(prompt, ensure_ascii=False, default=str)


def token_pieces(tokenizer, ids: list[int]) -> tuple[list[str], list[bool]]:
    """The text each token adds to the decoded completion, and which tokens are special.

    Decoding growing prefixes (not single tokens) keeps multi-byte characters whole: while the
    decoded text ends in an incomplete character (U+FFFD) the token adds nothing yet, and the
    token that completes the character carries it. The non-special pieces join to exactly
    `decode(ids, skip_special_tokens=True)`.
    """
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    pieces, special, emitted, last_text = [], [], "", ""
    for i, tid in enumerate(ids):
        if tid in specials:
            pieces.append(tokenizer.decode([tid]))
            special.append(True)
            continue
        last_text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        special.append(False)
        if last_text.endswith("\ufffd") or not last_text.startswith(emitted):
            pieces.append("")  # wait for the rest of the character
            continue
        pieces.append(last_text[len(emitted):])
        emitted = last_text
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if full != emitted:  # what is still held back goes on the last ordinary token
        j = max((k for k, sp in enumerate(special) if not sp), default=None)
        if j is not None:
            pieces[j] = full[len("".join(p for p, sp in zip(pieces[:j], special) if not sp)):]
    return pieces, special


def load_run_tokenizer(run_dir: Path | None, config: dict[str, Any] | None):
    """The student tokenizer of a run (see the module docstring for the search order)."""
    from transformers import AutoTokenizer

    candidates: list[Path] = []
    if run_dir is not None:
        candidates += [run_dir / "tokenizer", run_dir / "final"]
        cps = sorted((p for p in run_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                     key=lambda p: int(p.name.split("-")[-1]), reverse=True)
        candidates += cps
    for c in candidates:
        if (c / "tokenizer_config.json").is_file() or (c / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(str(c))
    student = ((config or {}).get("student") or {}).get("model")
    if student:
        from omniopd.models import load_tokenizer

        return load_tokenizer(student)
    raise ReportError(f"{run_dir}: no tokenizer saved with the run and no student in its config; "
                      "pass a run directory written by omniopd train")


class RunData:
    """See the module docstring. Use `RunData.open(path)`; `close()` when done."""

    def __init__(self, run_dir: Path | None, episodes_file: Path | None, tokenizer=None) -> None:
        self.run_dir = run_dir
        self.episodes_file = episodes_file
        self.problems: list[str] = []
        self.metrics: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.config: dict[str, Any] | None = None
        self._tokenizer = tokenizer
        self._store: SampleStore | None = None
        self._runs: list[str] = []
        self._episodes: dict[int, dict[str, Any]] | None = None
        self._samples: dict[str, SampleView] = {}
        self._fork_memo: dict[tuple[int, bool, bool], list[Fork]] = {}  # (step, with_text, with_prefix) -> forks
        # where the run's own files are looked for: its directory, else the folder of its episodes file
        self.home = run_dir if run_dir is not None else (episodes_file.parent if episodes_file is not None else None)
        if self.home is not None:
            self.metrics, self.problems = read_metrics(self.home / METRICS_FILE)
            cfg = self.home / "config.yaml"
            if cfg.is_file():
                try:
                    self.config = yaml.safe_load(cfg.read_text()) or {}
                except yaml.YAMLError as exc:
                    self.problems.append(f"config.yaml: not YAML ({exc}); ignored")
        if episodes_file is not None and episodes_file.is_file():
            try:
                self._store = SampleStore(episodes_file, "read-only")
                runs = self._store.runs()
            except CacheError as exc:
                raise ReportError(f"{episodes_file}: {exc}") from exc
            self._runs = [r for r, _, _ in runs]
            for _, _, meta in runs:  # the first run's meta; later ranks add what it lacks
                for k, v in meta.items():
                    self.meta.setdefault(k, v)
            if self.config is None:
                self.config = self.meta.get("config")
        elif run_dir is not None:
            self.problems.append(f"no {EPISODES_FILE} (trained with --no-episodes?): no forks to show")

    @classmethod
    def open(cls, path: str | Path, tokenizer=None) -> "RunData":
        p = Path(path).expanduser()
        if p.is_dir():
            if not (p / METRICS_FILE).exists() and not (p / EPISODES_FILE).exists():
                raise ReportError(f"{p}: no {METRICS_FILE} and no {EPISODES_FILE}; pass a run directory (the --output of omniopd train)")
            return cls(p, episodes_path(p), tokenizer)
        if p.is_file():
            run_dir = p.parent if (p.parent / METRICS_FILE).exists() else None
            data = cls(run_dir, p, tokenizer)
            if not data._runs:
                data.close()
                raise ReportError(f"{p}: holds no recorded run (a plain sample cache?); pass a run directory or its {EPISODES_FILE}")
            return data
        raise ReportError(f"{p}: no such run directory or file")

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> "RunData":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the run is ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.run_dir or self.episodes_file)

    def setting(self, section: str, key: str, default: Any = None) -> Any:
        value = ((self.config or {}).get(section) or {}).get(key)
        return default if value is None else value

    def status(self) -> str:
        """finished / stopped early / running or interrupted — from what is on disk."""
        if self.run_dir is None:
            return "recorded episodes"
        if (self.run_dir / "final").exists():
            return "finished"
        steps = self.setting("learner", "max_steps")
        done = int(self.metrics[-1]["step"]) if self.metrics else 0
        return f"running or interrupted ({done} of {steps} steps logged)" if steps else "running or interrupted"

    def replayed_from(self) -> str | None:
        return self.meta.get("replayed_from") or self.setting("cache", "replay")

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_run_tokenizer(self.home, self.config)
        return self._tokenizer

    # -- episodes ------------------------------------------------------------------------------
    def _load_episodes(self) -> dict[int, dict[str, Any]]:
        if self._episodes is not None:
            return self._episodes
        merged: dict[int, dict[str, Any]] = {}
        if self._store is not None:
            for run in self._runs:
                for step, blob in self._store.episode_blobs(run):
                    try:
                        ep = decode_episode(blob)
                    except ReplayError as exc:
                        self.problems.append(f"{run} step {step}: {exc}; skipped")
                        continue
                    _merge(merged.setdefault(step, {}), ep)
        self._episodes = dict(sorted(merged.items()))
        return self._episodes

    def episode_steps(self) -> list[int]:
        return list(self._load_episodes())

    def steps(self) -> list[int]:
        """Training steps (metrics numbering) with a recorded episode."""
        return [train_step(s) for s in self.episode_steps()]

    def episode(self, step: int) -> dict[str, Any]:
        eps = self._load_episodes()
        key = step - 1
        if key not in eps:
            have = ", ".join(map(str, self.steps())) or "none"
            raise ReportError(f"{self.name}: step {step} has no recorded episode (recorded steps: {have})")
        return eps[key]

    def samples(self, ids: list[str | None]) -> dict[str, SampleView]:
        """Stored samples by id (ids not stored are absent), read once and remembered."""
        want = [i for i in dict.fromkeys(ids) if i and i not in self._samples]
        if want and self._store is not None:
            identity = (self.meta.get("teacher") or {}).get("identity") or {}
            run_mode = identity.get("continuation") or identity.get("mode") or ""
            uids = []
            for i in want:
                try:
                    uids.append(bytes.fromhex(i))
                except ValueError:
                    self.problems.append(f"sample id {i!r} is not hex; skipped")
            for uid, entry in self._store.by_uid(uids).items():
                self._samples[uid.hex()] = sample_view(uid.hex(), entry.sample, run_mode)
        return {i: self._samples[i] for i in ids if i in self._samples}

    def forks(self, step: int | None = None, with_text: bool = True, with_prefix: bool = True) -> list[Fork]:
        """Every audited fork of `step` (all steps when None), in (step, completion, start) order.

        `with_text=False`: no sample text and no prefix; `with_prefix=False`: the samples but
        empty prefixes (no tokenizer, no decoding)."""
        steps = self.steps() if step is None else [step]
        out: list[Fork] = []
        for s in steps:
            out += self._forks_of(s, self.episode(s), with_text, with_prefix)
        return out

    def _forks_of(self, step: int, ep: dict[str, Any], with_text: bool, with_prefix: bool = True) -> list[Fork]:
        # a report asks for the same forks several times (fork table, inspector pages, teacher
        # table): build (and decode) each step's forks once
        key = (step, with_text, with_text and with_prefix)
        if key not in self._fork_memo:
            self._fork_memo[key] = forks_from_episode(
                step, ep, self.samples if with_text else None, self.tokenizer if key[2] else None,
                float(self.setting("scorer", "trim_slack", 0.2)))
        return self._fork_memo[key]

    def completion(self, step: int, index: int) -> Completion:
        ep = self.episode(step)
        comps = ep.get("completion_ids") or []
        if not 0 <= index < len(comps):
            raise ReportError(f"{self.name}: step {step} has completions 0..{len(comps) - 1}; got --completion {index}")
        ids = list(comps[index])
        pieces, special = token_pieces(self.tokenizer, ids)
        forks = [f for f in self._forks_of(step, ep, True) if f.completion == index]
        ents = list((ep.get("entropies") or [[]] * len(comps))[index])
        lps = list((ep.get("behaviour_logprobs") or [[]] * len(comps))[index])
        prompts = ep.get("prompts") or []
        return Completion(step, index, prompts[index] if index < len(prompts) else None, ids, pieces, special,
                          ents, lps, forks)

    def completions_in(self, step: int) -> int:
        return len(self.episode(step).get("completion_ids") or [])

    # -- aggregates ------------------------------------------------------------------------------
    def teacher_table(self) -> list[dict[str, Any]]:
        """Per (teacher, mode): samples, exact share, tokens and stored cost of the samples the forks used."""
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        seen: set[str] = set()
        for f in self.forks(with_prefix=False):
            for s in f.samples:
                if not s.stored or s.id in seen:
                    continue
                seen.add(s.id)  # type: ignore[arg-type]
                g = groups.setdefault((s.teacher, s.mode), {"teacher": s.teacher, "mode": s.mode, "model": s.model,
                                                           "samples": 0, "exact": 0, "input_tokens": 0.0,
                                                           "output_tokens": 0.0, "cost_usd": 0.0})
                g["samples"] += 1
                g["exact"] += int(s.exact)
                g["input_tokens"] += s.input_tokens
                g["output_tokens"] += s.output_tokens
                g["cost_usd"] += s.cost_usd
        rows = sorted(groups.values(), key=lambda g: -g["samples"])
        for g in rows:
            g["exact_share"] = g.pop("exact") / g["samples"] if g["samples"] else 0.0
        return rows

    def heldout(self) -> list[dict[str, Any]]:
        """`heldout.jsonl`: held-out accuracy during training against teacher spend (`--eval-every`)."""
        from omniopd.heldout import HELDOUT_FILE

        if self.run_dir is None:
            return []
        rows, problems = read_metrics(self.run_dir / HELDOUT_FILE)  # same line rules as metrics.jsonl
        self.problems.extend(problems)
        return rows

    def evals(self) -> list[tuple[str, dict[str, Any]]]:
        """`eval*.json` files in the run directory (written by `omniopd eval --output`)."""
        out = []
        if self.run_dir is None:
            return out
        for p in sorted(self.run_dir.glob("eval*.json")):
            try:
                d = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                self.problems.append(f"{p.name}: unreadable ({exc}); skipped")
                continue
            if isinstance(d, dict) and "greedy_accuracy" in d:
                out.append((p.stem, d))
        return out


def sample_view(sample_id: str | None, s: Any, run_mode: str = "") -> SampleView:
    """A stored `TeacherSample` as a `SampleView` (phi and `compared` are filled in per fork)."""
    mode = s.extra.get("continuation") or ("raw" if s.teacher.startswith("local") else run_mode)
    return SampleView(sample_id, s.text, s.text, None, s.teacher, s.model, bool(s.exact), mode, s.input_tokens,
                      s.output_tokens, s.cost_usd, s.finish_reason)


def forks_from_episode(step: int, ep: dict[str, Any], lookup: Callable[[list], dict[str, SampleView]] | None,
                       tokenizer, trim_slack: float = 0.2) -> list[Fork]:
    """The forks of one recorded episode, in (completion, start) order.

    `lookup(ids)` returns the stored samples by id (None: no sample text); `tokenizer` decodes
    each fork's prefix (None: empty prefixes). What phi saw of a sample is its first
    `compared_chars` characters, or the same trim recomputed for recordings without them.
    """
    chunks = sorted(ep.get("chunks") or [], key=lambda c: (c.get("row", 0), c.get("start", 0)))
    ids = [i for c in chunks for i in (c.get("sample_ids") or c.get("teacher_sample_ids") or [])]
    stored = lookup(ids) if lookup is not None else {}
    prompts, comps = ep.get("prompts") or [], ep.get("completion_ids") or []
    out, per_row = [], {}
    for c in chunks:
        row, start, length = int(c.get("row", 0)), int(c.get("start", 0)), int(c.get("length", 0))
        student = c.get("student_text", "")
        sids = list(c.get("sample_ids") or c.get("teacher_sample_ids") or [])
        phis, chars, teachers = list(c.get("phi") or []), list(c.get("compared_chars") or []), list(c.get("teachers") or [])
        views = []
        for j, sid in enumerate(sids):
            v = stored.get(sid) if sid else None
            if v is None:
                v = SampleView(sid, "", "", None, teachers[j] if j < len(teachers) else "", stored=False)
            else:
                v = dataclasses.replace(v)
            v.phi = float(phis[j]) if j < len(phis) else None
            v.compared = v.text[: int(chars[j])] if j < len(chars) else trim_to_chars(v.text, len(student), trim_slack)
            views.append(v)
        prefix = ""
        if tokenizer is not None and row < len(comps):
            prefix = tokenizer.decode(comps[row][:start], skip_special_tokens=True)
        index = per_row[row] = per_row.get(row, -1) + 1
        out.append(Fork(step, step - 1, row, index, start, length, prompts[row] if row < len(prompts) else None,
                        prefix, student, views, float(c.get("k", sum(phis))), int(c.get("n_eff", len(phis))),
                        float(c.get("pibar", 0.0)), float(c.get("pihat", 0.0)), sids))
    return out


def _merge(into: dict[str, Any], ep: dict[str, Any]) -> None:
    """Append one recorded run's episode of a step to another's (completion rows run on)."""
    offset = len(into.get("completion_ids") or [])
    for key, value in ep.items():
        if key == "chunks":
            into.setdefault("chunks", []).extend({**c, "row": int(c.get("row", 0)) + offset} for c in value)
        elif isinstance(value, list):
            into.setdefault(key, []).extend(value)
        else:
            into.setdefault(key, value)
