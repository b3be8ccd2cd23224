"""One task's instrument: problems, tokenizer, the teacher and the student's start (cached).

`prepare_task(scale, task, data_seed, cache_dir)` draws the task family's train / held-out /
dev problems (disjoint), trains the word-level tokenizer, and loads or trains

- the teacher: a larger model, SFT on the reference solutions and on prefixes with one number
  corrupted -> the correct rest (`tasks.corrupt_prefix`), then a *repair* phase: the start
  student's own flawed rollouts (and corrupted references) -> the restart mark and the correct
  solution (`tasks.restart`), so that it reaches the right answer from imperfect prefixes such
  as a student's rollout at a fork (the check `teacher_recovery` measures it);
- the start: a smaller student SFT on the reference solutions at a constant learning rate until
  its greedy accuracy on the dev split reaches `scale.start_target` (a mid-level student: the
  regime where distillation signals are informative; the dev split, never the held-out one,
  picks the stopping step).

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


def teacher_data(train: list, repair_share: float, seed: int, repair: bool = False) -> list[tuple[str, ...]]:
    """The teacher's SFT data: every reference solution, plus triples for a `repair_share`
    fraction of the problems (question, corrupted prefix, continuation: the correct rest, or
    with `repair` the restart mark and the correct solution, `tasks.corrupt_prefix`)."""
    rng = random.Random(seed)
    data: list[tuple[str, ...]] = [(p.question, p.solution) for p in train]
    for p in train:
        if rng.random() < repair_share:
            c = tasks.corrupt_prefix(p.solution, rng, repair=repair)
            if c is not None:
                data.append((p.question, c[0], c[1]))
    return data


def student_repairs(start, tok, problems: list, max_new_tokens: int, batch_size: int, seed: int) -> list[tuple[str, str, str]]:
    """Repair examples from the start student's own temperature-1 rollouts on training problems:
    (question, the student's text cut somewhere after its first deviation from the reference,
    `tasks.restart(reference)`). The teacher learns to notice a flawed prefix of the kind the
    student really writes and to repair it, as an API teacher continuing a student would."""
    rng = random.Random(seed)
    g = measure.generate(start, tok, [p.question for p in problems], max_new_tokens=max_new_tokens,
                         batch_size=batch_size, temperature=1.0, seed=seed)
    out = []
    for p, text in zip(problems, g.texts):
        ws, ref = text.split(" "), p.solution.split(" ")
        end = ws.index("####") if "####" in ws else len(ws)
        diff = [i for i in range(min(end, len(ref))) if ws[i] != ref[i]]
        if not diff and end <= len(ref) and ws[:end] == ref[:end]:
            continue
        first = diff[0] if diff else min(end, len(ref))
        if first >= end:
            continue
        cut = rng.randint(first + 1, end)
        out.append((p.question, " ".join(ws[:cut]), tasks.restart(p.solution)))
    return out


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

    tkey = _key({"task": task, "size": dataclasses.asdict(scale.teacher), "steps": scale.teacher_steps,
                 "lr": scale.teacher_lr, "repair": scale.teacher_repair, "n_train": scale.n_train, "seed": data_seed,
                 "vocab": tok.get_vocab()})

    def train_teacher():
        data = teacher_data(train, scale.teacher_repair, data_seed)
        teacher = nets.build_model(scale.teacher, tok, seed=0)
        _log(f"{task}: training teacher ({nets.n_params(teacher):,} params, {scale.teacher_steps} steps, "
             f"{len(data)} examples incl. {len(data) - len(train)} repair)")
        t0 = time.perf_counter()
        losses = nets.sft(teacher, tok, data, steps=scale.teacher_steps, batch_size=scale.batch_size,
                          lr=scale.teacher_lr, seed=0)
        return teacher, {"train_s": time.perf_counter() - t0, "final_loss": losses[-1],
                         "params": nets.n_params(teacher), "steps": scale.teacher_steps}

    teacher, info["teacher"] = _cached_model(cache_dir / f"{task}-teacher-{tkey}", retrain, f"{task}: teacher",
                                             train_teacher)

    skey = _key({"tkey": tkey, "size": dataclasses.asdict(scale.student), "lr": scale.student_lr,
                 "target": scale.start_target, "max": scale.student_max_steps, "n_dev": scale.n_dev})

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

    if scale.teacher_repair_steps > 0:
        rkey = _key({"tkey": tkey, "skey": skey, "steps": scale.teacher_repair_steps, "lr": scale.teacher_repair_lr,
                     "n": scale.teacher_repair_rollouts, "repair": "restart+clean", "max_new": scale.max_new_tokens})

        def repair_teacher():
            t0 = time.perf_counter()
            repairs = student_repairs(start, tok, train[: scale.teacher_repair_rollouts], scale.max_new_tokens,
                                      scale.eval_batch, seed=data_seed)
            # as many clean prefixes -> the reference's rest: the teacher restarts only after a mistake
            rng = random.Random(data_seed + 2)
            clean = []
            for p in rng.sample(train, min(len(train), len(repairs))):
                ws = p.solution.split(" ")
                k = rng.randint(1, ws.index("####"))
                clean.append((p.question, " ".join(ws[:k]), " ".join(ws[k:])))
            data = teacher_data(train, scale.teacher_repair, data_seed + 1, repair=True) + repairs + clean
            _log(f"{task}: repair phase ({scale.teacher_repair_steps} steps, {len(repairs)} student-prefix repairs "
                 f"from {scale.teacher_repair_rollouts} start rollouts, {len(data)} examples)")
            repaired = teacher.train()
            nets.sft(repaired, tok, data, steps=scale.teacher_repair_steps, batch_size=scale.batch_size,
                     lr=scale.teacher_repair_lr, seed=1)
            return repaired, {"train_s": time.perf_counter() - t0, "steps": scale.teacher_repair_steps,
                              "student_repairs": len(repairs), "examples": len(data)}

        teacher, info["teacher_repair"] = _cached_model(cache_dir / f"{task}-teacher-repaired-{rkey}", retrain,
                                                        f"{task}: repaired teacher", repair_teacher)
    teacher.eval()
    return TaskContext(scale, task, tok, teacher, start, train, test, dev, train_jsonl, workdir, info)
