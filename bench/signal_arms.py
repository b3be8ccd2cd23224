"""A quick check that the black-box signals teach: a few lab arms from a mid-level student.

    python -m bench.signal_arms [--budget 48000] [--lr 1e-4] [--arms sft,omniopd,...]

Uses the teacher and student that `python -m bench.signal_gradients` trains and caches (a
2 x 64 teacher SFT-ed 1,500 steps, ~96 % held-out; the same net SFT-ed 500 steps, ~47 %), the
lab's arithmetic task and its arm runner (`bench.lab.arms.run_arm`: omniopd's real
`run_train`, the teacher behind the provider interface, a budget of teacher output tokens),
one seed, greedy accuracy on the lab's 200 held-out problems. It is a smoke-sized comparison
for the signals' author, not the lab's learning curves (bench/lab owns those).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.lab import arms as lab_arms, tasks, tokenizer as labtok
from bench.lab.run import SCALES, scale_with
from bench.signal_gradients import _model

EDIT = {"scorer.similarity": "edit"}
ARMS = {a.name: a for a in [
    lab_arms.Arm("no-training", "none", "the student as it starts"),
    lab_arms.Arm("sft", "sft", "SFT on teacher-written solutions"),
    lab_arms.Arm("omniopd", "pipeline", "the paper's loss (phi = edit)", EDIT),
    lab_arms.Arm("baseline-group", "pipeline", "pi_hat minus the prompt group's mean (phi = edit)",
                 {**EDIT, "method.pihat_baseline": "group"}),
    lab_arms.Arm("baseline-loo", "pipeline", "pi_hat minus the other completions' mean (phi = edit)",
                 {**EDIT, "method.pihat_baseline": "loo"}),
    lab_arms.Arm("numbers-group", "pipeline", "phi = numbers, group baseline",
                 {"scorer.similarity": "numbers", "method.pihat_baseline": "group"}),
    lab_arms.Arm("imitation", "pipeline", "the paper's loss + fork imitation w = 1 (phi = edit)",
                 {**EDIT, "method.fork_imitation": 1.0}),
    lab_arms.Arm("drafts-group", "pipeline", "4 student drafts per fork + group baseline (phi = numbers)",
                 {"scorer.similarity": "numbers", "method.pihat_baseline": "group", "method.student_drafts": 4}),
    lab_arms.Arm("imitation-numbers-group", "pipeline", "fork imitation w = 1 + group baseline, phi = numbers",
                 {"scorer.similarity": "numbers", "method.pihat_baseline": "group", "method.fork_imitation": 1.0}),
]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=48000, help="teacher output tokens per arm")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--workdir", default="runs/signal-gradients")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = scale_with("small", budget_tokens=args.budget, arm_lr=args.lr, max_arm_steps=400)
    train, test = tasks.make_splits(1234, s.n_train, s.n_test)
    tok = labtok.train_tokenizer(tasks.corpus(train))
    work = Path(args.workdir)
    teacher = _model(tok, SCALES["small"].student, 1500, work / "teacher-1500", train, 1)
    student = _model(tok, SCALES["small"].student, 500, work / "student-500", train, 0)
    import json

    train_jsonl = work / "train.jsonl"
    train_jsonl.write_text("".join(json.dumps(p.row()) + "\n" for p in train))
    test_rows = [{"prompt": [{"role": "user", "content": p.question}], "answer": str(p.answer)} for p in test]
    ctx = lab_arms.LabContext(s, tok, teacher, train, test_rows, train_jsonl, work / "arms")
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    print(f"budget {args.budget} teacher tokens per arm, lr {args.lr}, seed {args.seed}, 200 held-out problems\n")
    print("| arm | accuracy | teacher tokens | steps | weights moved (L2) | train s | what |\n"
          "| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for name in [a.strip() for a in args.arms.split(",") if a.strip()]:
        t0 = time.perf_counter()
        r = lab_arms.run_arm(ARMS[name], ctx, student, args.seed)
        print(f"| {name} | {r.accuracy:.3f} | {r.teacher_tokens} | {r.steps} | {r.extra['weights_moved_l2']:.2f} | "
              f"{time.perf_counter() - t0:.0f} | {ARMS[name].help} |", flush=True)


if __name__ == "__main__":
    main()
