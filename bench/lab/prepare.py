"""One task's instrument: problems, tokenizer, the teacher and the student's start (cached).

`prepare_task(scale, task, data_seed, cache_dir)` draws the task family's train / held-out /
dev problems (disjoint), trains the word-level tokenizer, and loads or trains

- the start (first): a smaller student SFT on the reference solutions at a constant learning
  rate until its greedy accuracy on the dev split reaches `scale.start_target` (a mid-level
  student: the regime where distillation signals are informative; the dev split, never the
  held-out one, picks the stopping step);
- the teacher: a larger model trained from scratch on the reference solutions, on prefixes of
  them -> their rest, and on *repairs* (`teacher_data`): the start's own temperature-1
  rollouts on the training problems, cut at random, continue with the reference's rest where
  the cut is still right and restart (`tasks.restart`: the mark `?`, then the correct
  solution) where its numbers are already wrong, as are references with one number corrupted.
  So it reaches the right answer from the imperfect prefixes a student writes, as an API
  teacher continuing a student's fork must (the check `teacher_recovery` measures it).

Both are cached under `cache_dir`, keyed by everything they depend on, so only a cold run
trains them. Each arm x seed starts from a copy of the same start; seeds vary the arms'
sampling and data order.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from bench.lab import measure, nets, tasks
from bench.lab import tokenizer as labtok


@dataclass
class TaskContext:
    """What every arm of one task shares in one lab run."""

    scale: Any  # bench.lab.run.Scale
    task: str
    tokenizer: Any
    teacher: Any
    start: Any
    train: list  # list[tasks.Problem]
    test: list
    dev: list
    train_jsonl: Path
    workdir: Path
    info: dict = field(default_factory=dict)
    phis: dict[str, Callable] = field(default_factory=dict)
    _start_state: dict | None = None

    @property
    def start_state(self) -> dict[str, torch.Tensor]:
        if self._start_state is None:
            self._start_state = {k: v.detach().clone() for k, v in self.start.state_dict().items()}
        return self._start_state

    def fresh_student(self):
        return copy.deepcopy(self.start).train()

    def accuracy(self, model, problems, temperature: float = 0.0, seed: int | None = None) -> float:
        g = measure.generate(model, self.tokenizer, [p.question for p in problems], temperature=temperature,
                             max_new_tokens=self.scale.max_new_tokens, batch_size=self.scale.eval_batch, seed=seed)
        return measure.accuracy(g.texts, [p.answer for p in problems])

    def measure(self, model, seed: int, dev: bool = False) -> dict[str, float]:
        """Held-out greedy and T=1 accuracy, KL to the start on the T=1 samples, weight L2."""
        s = self.scale
        qs, ans = [p.question for p in self.test], [p.answer for p in self.test]
        g0 = measure.generate(model, self.tokenizer, qs, max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch)
        g1 = measure.generate(model, self.tokenizer, qs, max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch,
                              temperature=1.0, seed=10_000 + seed)
        out = {"accuracy": measure.accuracy(g0.texts, ans), "accuracy_t1": measure.accuracy(g1.texts, ans),
               "kl_to_start": measure.kl_to_start_per_token(model, self.start, g1, self.tokenizer.pad_token_id),
               "weights_l2": measure.weights_l2(model, self.start_state),
               "completion_tokens_t1": sum(len(c) for c in g1.completion_ids) / max(1, len(g1.completion_ids))}
        if dev:
            out["dev_accuracy"] = self.accuracy(model, self.dev)
        return out

    def phi(self, name: str):
        """Similarity functions are built once per process (the embedder loads once)."""
        if name not in self.phis:
            from omniopd.similarity import build_similarity

            self.phis[name] = build_similarity(name, tokenizer=self.tokenizer)
        return self.phis[name]

    def local_teacher(self):
        from providers.local import LocalTeacher

        return LocalTeacher(self.teacher, self.tokenizer, spec="local:lab-teacher")


def _log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _key(obj: Any) -> str:
    from providers.base import stable_hash

    return stable_hash(obj)[:12]


def _load(path: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(path)).eval()


def _cached_model(path: Path, retrain: bool, what: str, train: Callable[[], tuple[Any, dict]]) -> tuple[Any, dict]:
    """(model, info): loaded from `path` if a previous run saved it there (unless `retrain`), else
    `train()` -> (model, meta), saved with its meta in `lab_info.json` for the next run."""
    if (path / "config.json").is_file() and not retrain:
        model = _load(path)
        _log(f"{what} loaded from {path}")
        return model, {**json.loads((path / "lab_info.json").read_text()), "cached": True}
    model, meta = train()
    model.save_pretrained(str(path))
    (path / "lab_info.json").write_text(json.dumps(meta))
    return model, {**meta, "cached": False}


def _cut_examples(problem, text: str, rng: random.Random, cuts: int) -> list[tuple[str, str, str, bool]]:
    """`cuts` (question, prefix, continuation, is_restart) examples from one student rollout,
    each cut at a random word up to and including `####`. A prefix equal to the reference's
    start, or differing from it only in words that are not numbers (a copied name or item),
    continues with the reference's rest; a prefix whose numbers already differ (or whose shape
    differs) gets `tasks.restart(reference)`: such a prefix cannot be continued consistently to
    the right answer (`... 24 - 2 =` when the answer needs 36 - 2), only noticed and redone."""
    ws, ref = text.split(" "), problem.solution.split(" ")
    end = ws.index("####") + 1 if "####" in ws else len(ws)
    out = []
    for _ in range(cuts):  # end >= 1: a split text has at least one word
        cut = rng.randint(1, end)
        pre, r = ws[:cut], ref[:cut]
        flawed = len(pre) != len(r) or any(a != b and (tasks.is_number(a) or tasks.is_number(b)) for a, b in zip(pre, r))
        rest = tasks.restart(problem.solution) if flawed else " ".join(ref[cut:])
        out.append((problem.question, " ".join(pre), rest, flawed))
    return out


def teacher_data(train: list, rollouts: list[str], restart_share: float, seed: int) -> tuple[list[tuple[str, ...]], dict]:
    """The teacher's SFT data and its counts. Continuations (no restart): every reference
    solution twice, a random clean prefix of each -> its rest, and the start student's own
    temperature-1 `rollouts` (one per training problem) cut twice at random, where the cut is
    clean or only a word is off (`_cut_examples`). Restarts: the rollouts' cuts whose numbers
    are off, and references with one number corrupted (`tasks.corrupt_prefix`), sampled to make
    `restart_share` of the data. The teacher so learns to go on from a good prefix and to notice
    and redo a flawed one, which is what an API teacher continuing a student's fork must do; the
    share is a trade-off (more restarts: better repairs, more spurious restarts in its own
    solutions; the `teacher_accuracy` check reports both)."""
    rng = random.Random(seed)
    keep: list[tuple[str, ...]] = [(p.question, p.solution) for p in train] * 2
    restarts: list[tuple[str, ...]] = []
    for p in train:
        ws = p.solution.split(" ")
        k = rng.randint(1, len(ws) - 1)
        keep.append((p.question, " ".join(ws[:k]), " ".join(ws[k:])))
        c = tasks.corrupt_prefix(p.solution, rng, repair=True)
        if c is not None:
            restarts.append((p.question, *c))
    for p, text in zip(train, rollouts):
        for q, pre, rest, flawed in _cut_examples(p, text, rng, cuts=2):
            (restarts if flawed else keep).append((q, pre, rest))
    n = min(len(restarts), int(restart_share * len(keep) / (1 - restart_share))) if restart_share < 1 else len(restarts)
    picked = rng.sample(restarts, n)
    return keep + picked, {"continue_examples": len(keep), "restart_examples": n, "restart_pool": len(restarts)}


def prepare_task(scale, task: str, data_seed: int, cache_dir: Path, workdir: Path,
                 retrain: bool = False) -> TaskContext:
    """Problems, tokenizer, teacher and start for one task family (see module docstring)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    train, test, dev = tasks.make_splits(data_seed, scale.n_train, scale.n_test, task, n_dev=scale.n_dev)
    train_jsonl = workdir / "train.jsonl"
    train_jsonl.write_text("".join(json.dumps(p.row()) + "\n" for p in train))
    (workdir / "test.jsonl").write_text("".join(json.dumps(p.row()) + "\n" for p in test))
    tok = labtok.train_tokenizer(tasks.corpus(train))
    info: dict[str, Any] = {}

    # the start first: the teacher learns to repair the start's own rollouts
    skey = _key({"task": task, "size": dataclasses.asdict(scale.student), "lr": scale.student_lr,
                 "target": scale.start_target, "max": scale.student_max_steps, "n_dev": scale.n_dev,
                 "n_train": scale.n_train, "seed": data_seed, "vocab": tok.get_vocab()})

    def train_start():
        start = nets.build_model(scale.student, tok, seed=1000)
        t0 = time.perf_counter()
        probe = {"step": 0, "dev": 0.0}
        dev_qs, dev_ans = [p.question for p in dev], [p.answer for p in dev]

        def reached(step: int) -> bool:
            if step % scale.start_eval_every:
                return False
            g = measure.generate(start, tok, dev_qs, max_new_tokens=scale.max_new_tokens, batch_size=scale.eval_batch)
            probe.update(step=step, dev=measure.accuracy(g.texts, dev_ans))
            return probe["dev"] >= scale.start_target

        nets.sft(start, tok, [(p.question, p.solution) for p in train], steps=scale.student_max_steps,
                 batch_size=scale.batch_size, lr=scale.student_lr, seed=1000, schedule="constant", stop=reached)
        meta = {"train_s": time.perf_counter() - t0, "steps": probe["step"], "dev_accuracy": probe["dev"],
                "params": nets.n_params(start)}
        _log(f"{task}: start trained {probe['step']} steps, dev greedy {probe['dev']:.3f} "
             f"({meta['train_s']:.0f}s)")
        return start, meta

    start, info["start"] = _cached_model(cache_dir / f"{task}-start-{skey}", retrain, f"{task}: start", train_start)
    start.eval()

    tkey = _key({"skey": skey, "size": dataclasses.asdict(scale.teacher), "steps": scale.teacher_steps,
                 "lr": scale.teacher_lr, "restart_share": scale.teacher_restart_share, "data": "v2",
                 "max_new": scale.max_new_tokens})

    def train_teacher():
        t0 = time.perf_counter()
        g = measure.generate(start, tok, [p.question for p in train], max_new_tokens=scale.max_new_tokens,
                             batch_size=scale.eval_batch, temperature=1.0, seed=data_seed)
        data, counts = teacher_data(train, g.texts, scale.teacher_restart_share, data_seed)
        teacher = nets.build_model(scale.teacher, tok, seed=0)
        _log(f"{task}: training teacher ({nets.n_params(teacher):,} params, {scale.teacher_steps} steps, "
             f"{len(data)} examples: {counts['restart_examples']} repairs)")
        losses = nets.sft(teacher, tok, data, steps=scale.teacher_steps, batch_size=scale.batch_size,
                          lr=scale.teacher_lr, seed=0)
        return teacher, {"train_s": time.perf_counter() - t0, "final_loss": losses[-1],
                         "params": nets.n_params(teacher), "steps": scale.teacher_steps, **counts}

    teacher, info["teacher"] = _cached_model(cache_dir / f"{task}-teacher-{tkey}", retrain, f"{task}: teacher",
                                             train_teacher)
    teacher.eval()
    return TaskContext(scale, task, tok, teacher, start, train, test, dev, train_jsonl, workdir, info)
