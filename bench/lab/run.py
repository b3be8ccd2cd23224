"""The controlled distillation lab, as one command.

    python -m bench.lab.run --scale small            # ~30 min on 2 CPU cores
    python -m bench.lab.run --scale large            # for a GPU
    python -m bench.lab.run --scale tiny --seeds 1   # seconds; the smoke test's size

Steps: draw train / held-out problems (disjoint), train a word-level tokenizer on the training
texts, SFT a teacher until it is strong on the held-out split (cached under the work directory,
keyed by the scale, so a second run reuses it), then per seed SFT a smaller student briefly on
reference solutions (weak), and run every arm of `bench.lab.arms.ARMS` from that student at the
same teacher budget. Writes `results.json` (every arm x seed), `results.md` (the table) and
`accuracy_vs_tokens.png` into the output directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.lab.nets import NetSize


@dataclass(frozen=True)
class Scale:
    n_train: int
    n_test: int
    teacher: NetSize
    teacher_steps: int
    teacher_lr: float
    student: NetSize
    student_steps: int
    student_lr: float
    budget_tokens: int  # teacher output tokens per arm
    arm_lr: float  # every arm trains the student at this learning rate
    arm_batch: int  # SFT arm batch (sequences)
    sft_epochs: float
    prompts_per_step: int
    generations: int  # G (OPD uses prompts_per_step * generations completions per step too)
    teacher_samples: int  # N
    chunk_tokens: int  # C
    chunks_per_completion: int  # M
    max_arm_steps: int  # a cap; the budget normally stops an arm first
    max_new_tokens: int = 64
    eval_batch: int = 64
    seeds: int = 3
    batch_size: int = 32  # teacher / student pre-training batch


SCALES: dict[str, Scale] = {
    "tiny": Scale(n_train=200, n_test=16, teacher=NetSize(32, 1, 2, 64), teacher_steps=10, teacher_lr=3e-3,
                  student=NetSize(16, 1, 2, 32), student_steps=5, student_lr=3e-3, budget_tokens=600, arm_lr=1e-3,
                  arm_batch=8, sft_epochs=1, prompts_per_step=2, generations=2, teacher_samples=2, chunk_tokens=6,
                  chunks_per_completion=2, max_arm_steps=2, max_new_tokens=32, eval_batch=16, seeds=1, batch_size=8),
    "small": Scale(n_train=4000, n_test=200, teacher=NetSize(128, 4, 4, 384), teacher_steps=900, teacher_lr=3e-3,
                   student=NetSize(64, 2, 4, 192), student_steps=150, student_lr=3e-3, budget_tokens=16000, arm_lr=5e-4,
                   arm_batch=16, sft_epochs=2, prompts_per_step=4, generations=4, teacher_samples=4, chunk_tokens=8,
                   chunks_per_completion=2, max_arm_steps=200),
    "large": Scale(n_train=40000, n_test=1000, teacher=NetSize(384, 8, 8, 1152), teacher_steps=8000, teacher_lr=1e-3,
                   student=NetSize(128, 3, 4, 384), student_steps=400, student_lr=2e-3, budget_tokens=400000, arm_lr=3e-4,
                   arm_batch=32, sft_epochs=2, prompts_per_step=8, generations=8, teacher_samples=8, chunk_tokens=10,
                   chunks_per_completion=3, max_arm_steps=2000, seeds=5),
}


def scale_with(name: str, **changes) -> Scale:
    return dataclasses.replace(SCALES[name], **changes)


def _log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(scale: Scale, workdir: Path, data_seed: int = 1234, retrain_teacher: bool = False):
    """Problems, tokenizer and the trained teacher (cached), as a LabContext."""
    import torch

    from bench.lab import arms, nets, tasks, tokenizer as labtok
    from omniopd.answers import is_correct  # noqa: F401  (fail early if math-verify is missing)
    from omniopd.config import TrainConfig  # noqa: F401

    workdir.mkdir(parents=True, exist_ok=True)
    train, test = tasks.make_splits(data_seed, scale.n_train, scale.n_test)
    train_jsonl = workdir / "train.jsonl"
    train_jsonl.write_text("".join(json.dumps(p.row()) + "\n" for p in train))
    (workdir / "test.jsonl").write_text("".join(json.dumps(p.row()) + "\n" for p in test))
    tok = labtok.train_tokenizer(tasks.corpus(train))
    test_rows = [{"prompt": [{"role": "user", "content": p.question}], "answer": str(p.answer)} for p in test]

    from providers.base import stable_hash

    key = stable_hash({"scale": dataclasses.asdict(scale.teacher), "steps": scale.teacher_steps, "lr": scale.teacher_lr,
                       "n_train": scale.n_train, "seed": data_seed, "vocab": tok.get_vocab()})[:12]
    tdir = workdir / f"teacher-{key}"
    info: dict = {}
    if (tdir / "config.json").is_file() and not retrain_teacher:
        from transformers import LlamaForCausalLM

        teacher = LlamaForCausalLM.from_pretrained(str(tdir)).eval()
        info = json.loads((tdir / "lab_info.json").read_text())
        info["cached"] = True
        _log(f"teacher loaded from {tdir}")
    else:
        _log(f"training teacher ({nets.n_params(nets.build_model(scale.teacher, tok, 0)):,} params, {scale.teacher_steps} steps)")
        t0 = time.perf_counter()
        teacher = nets.build_model(scale.teacher, tok, seed=0)
        losses = nets.sft(teacher, tok, [(p.question, p.solution) for p in train], steps=scale.teacher_steps,
                          batch_size=scale.batch_size, lr=scale.teacher_lr, seed=0)
        info = {"train_s": time.perf_counter() - t0, "final_loss": losses[-1], "params": nets.n_params(teacher), "cached": False}
        teacher.save_pretrained(str(tdir))
    ctx = arms.LabContext(scale, tok, teacher, train, test_rows, train_jsonl, workdir)
    if "accuracy" not in info:
        info["accuracy"] = ctx.held_out_accuracy(teacher)
        (tdir / "lab_info.json").write_text(json.dumps({k: v for k, v in info.items() if k != "cached"}))
    torch.manual_seed(0)
    return ctx, info


def weak_student(ctx, seed: int):
    """The seed's starting student: a smaller model, briefly trained on the reference solutions."""
    from bench.lab import nets

    s = ctx.scale
    student = nets.build_model(s.student, ctx.tokenizer, seed=1000 + seed)
    pairs = [(p.question, p.solution) for p in ctx.train]
    nets.sft(student, ctx.tokenizer, pairs, steps=s.student_steps, batch_size=s.batch_size, lr=s.student_lr, seed=1000 + seed)
    return student


def run_lab(scale: Scale, workdir: Path, arm_names: list[str], seeds: int, retrain_teacher: bool = False,
            on_result=None) -> dict:
    """Every arm x seed; `on_result(partial_report)` is called after each one (progress saving)."""
    from bench.lab import arms as armmod

    t_start = time.perf_counter()
    ctx, teacher_info = prepare(scale, workdir, retrain_teacher=retrain_teacher)
    _log(f"teacher held-out accuracy {teacher_info['accuracy']:.3f}")
    results: list[dict] = []

    def report() -> dict:
        return {"scale": dataclasses.asdict(scale), "teacher": teacher_info, "seeds": seeds, "arms": arm_names,
                "results": list(results), "total_s": time.perf_counter() - t_start}
    for seed in range(seeds):
        t0 = time.perf_counter()
        student = weak_student(ctx, seed)
        _log(f"seed {seed}: student ready ({time.perf_counter() - t0:.0f}s)")
        for name in arm_names:
            r = armmod.run_arm(armmod.ARMS[name], ctx, student, seed)
            results.append(dataclasses.asdict(r))
            _log(f"seed {seed} {name:<16} acc {r.accuracy:.3f}  teacher tokens {r.teacher_tokens:>7}  "
                 f"steps {r.steps:>4}  {r.wall_s:.0f}s")
            if on_result is not None:
                on_result(report())
    return report()


def summarize(report: dict) -> list[dict]:
    """Per arm: mean accuracy, its standard error over seeds, mean teacher tokens and wall time."""
    rows = []
    for name in report["arms"]:
        rs = [r for r in report["results"] if r["arm"] == name]
        if not rs:
            continue
        accs = [r["accuracy"] for r in rs]
        se = statistics.stdev(accs) / len(accs) ** 0.5 if len(accs) > 1 else float("nan")
        rows.append({"arm": name, "accuracy": statistics.fmean(accs), "se": se, "n": len(accs),
                     "teacher_tokens": statistics.fmean(r["teacher_tokens"] for r in rs),
                     "wall_s": statistics.fmean(r["wall_s"] for r in rs), "steps": statistics.fmean(r["steps"] for r in rs)})
    return rows


def table_md(report: dict) -> str:
    from bench.lab.arms import ARMS

    lines = ["| arm | held-out accuracy (mean ± s.e.) | seeds | teacher tokens | steps | train wall s | what it is |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in summarize(report):
        se = "n/a" if r["se"] != r["se"] else f"{r['se']:.3f}"
        lines.append(f"| {r['arm']} | {r['accuracy']:.3f} ± {se} | {r['n']} | {r['teacher_tokens']:.0f} | {r['steps']:.0f} | "
                     f"{r['wall_s']:.0f} | {ARMS[r['arm']].help} |")
    t = report["teacher"]
    lines.append("")
    lines.append(f"Teacher held-out accuracy: {t['accuracy']:.3f} ({t.get('params', '?'):,} parameters"
                 + (", cached from an earlier run" if t.get("cached") else f", trained in {t.get('train_s', 0):.0f} s") + ").")
    lines.append(f"Whole run: {report['total_s']:.0f} s.")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(report)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in rows:
        yerr = None if r["se"] != r["se"] else r["se"]
        ax.errorbar(r["teacher_tokens"], r["accuracy"], yerr=yerr, fmt="o", capsize=3, label=r["arm"])
    ax.axhline(report["teacher"]["accuracy"], color="gray", ls="--", lw=1, label="teacher")
    ax.set_xlabel("teacher output tokens per arm")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"lab: accuracy vs teacher tokens ({report['seeds']} seeds, mean ± s.e.)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from bench.lab.arms import ARMS

    p = argparse.ArgumentParser(prog="python -m bench.lab.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the scale's, >= 3 for small/large)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of: {', '.join(ARMS)}")
    p.add_argument("--out", default=None, help="output directory (default runs/lab/<scale>)")
    p.add_argument("--retrain-teacher", action="store_true", help="ignore a cached teacher")
    p.add_argument("--budget", type=int, default=None, help="teacher output tokens per arm (default: the scale's)")
    p.add_argument("--arm-lr", type=float, default=None, help="learning rate of every arm (default: the scale's)")
    args = p.parse_args(argv)
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    changes = {k: v for k, v in (("budget_tokens", args.budget), ("arm_lr", args.arm_lr)) if v is not None}
    scale = scale_with(args.scale, **changes)
    seeds = args.seeds or scale.seeds
    out = Path(args.out or f"runs/lab/{args.scale}")
    command = "python -m bench.lab.run " + " ".join(sys.argv[1:] if argv is None else argv)

    def save(report: dict) -> str:
        report["command"] = command
        (out / "results.json").write_text(json.dumps(report, indent=2))
        md = table_md(report)
        (out / "results.md").write_text(md + "\n")
        plot(report, out / "accuracy_vs_tokens.png")
        return md

    report = run_lab(scale, out, args.arms.split(","), seeds, retrain_teacher=args.retrain_teacher, on_result=save)
    md = save(report)
    print(md)
    print(f"wrote {out}/results.json, results.md, accuracy_vs_tokens.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
