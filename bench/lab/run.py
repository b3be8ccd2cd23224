"""The controlled distillation lab, as one command.

    python -m bench.lab.run --scale small             # the default arms, both task families
    python -m bench.lab.run --scale small --arms all --lr-sweep 1e-4,3e-4,1e-3 --name small-full
    python -m bench.lab.run --scale tiny --seeds 1    # seconds; the smoke test's size
    python -m bench.lab.run --scale small --budget-usd 1.2 --arms no-training,sft,sft-gated,noise-floor   # in dollars

Per task family (`arith`, `lists`; `bench.lab.tasks`): draw train / held-out / dev problems
(disjoint, `--data-seed`), train a word-level tokenizer, train (or load from the cache) a teacher
that also repairs the start's flawed prefixes and a mid-level start student (`bench.lab.prepare`), then

1. the instrument checks (`bench.lab.checks`): teacher accuracy, teacher recovery from the
   student's forks, the start's accuracy; the lab stops if one fails;
2. the control arms (no-training, SFT on teacher solutions, white-box OPD) and the positive
   control: SFT and OPD must beat no-training by > 2 s.e.; the lab stops if not;
3. every other arm, then the noise floor (the start moved by random noise of the size the
   trained arms moved it).

Each arm x seed is one run measured at budget milestones (a learning curve): teacher output
tokens, or with `--budget-usd` teacher dollars, every call priced by `--price-card`
(`bench.lab.dollars`; every record carries `teacher_usd` either way). Jobs run in
`--workers` processes (one torch thread each). Writes `bench/lab/results/<name>.json`
(`records`, `checks`) and `<name>-<task>.png` after every finished job, and the run's files
(logs, teachers' and students' run directories) under `runs/lab/<name>-<config key>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench.lab.nets import NetSize


@dataclass(frozen=True)
class Scale:
    n_train: int
    n_test: int
    n_dev: int
    teacher: NetSize
    teacher_steps: int
    teacher_lr: float
    teacher_restart_share: float  # share of the teacher's data that are repairs (prepare.teacher_data)
    student: NetSize
    student_lr: float
    student_max_steps: int
    start_target: float  # the start is trained until its dev greedy accuracy reaches this
    start_eval_every: int
    budget_tokens: int  # teacher tokens per arm (the last milestone)
    milestones: tuple[float, ...]  # fractions of the budget where every arm is measured
    arm_lr: float  # learning rate of an arm that has no tuned one
    arm_batch: int  # SFT arm batch (sequences)
    sft_reuse: float  # passes over each bought batch of teacher solutions
    prompts_per_step: int
    generations: int  # G (OPD uses prompts_per_step * generations completions per step too)
    teacher_samples: int  # N
    chunk_tokens: int  # C
    chunks_per_completion: int  # M
    max_arm_steps: int  # a cap; the budget normally stops an arm first
    max_new_tokens: int = 48  # room for a repair (restart mark + a whole solution) after a flawed prefix
    eval_batch: int = 200
    seeds: int = 3
    batch_size: int = 32  # teacher / start pre-training batch
    recovery_n: int = 128
    teacher_min: float = 0.85
    recovery_min: float = 0.7
    recovery_flawed_min: float = 0.5
    start_band: tuple[float, float] = (0.30, 0.45)
    budget_usd: float | None = None  # when set, milestones are in teacher dollars (the last one), not tokens
    price_card: str = "claude-haiku-4-5"  # bench.lab.dollars: prices every teacher call

    @property
    def budget_unit(self) -> str:
        return "usd" if self.budget_usd is not None else "tokens"

    def budgets(self) -> list[float]:
        if self.budget_usd is not None:
            return sorted({round(f * self.budget_usd, 6) for f in self.milestones})
        return sorted({max(1, round(f * self.budget_tokens)) for f in self.milestones})


SCALES: dict[str, Scale] = {
    "tiny": Scale(n_train=200, n_test=16, n_dev=16, teacher=NetSize(32, 1, 2, 64), teacher_steps=10, teacher_lr=3e-3,
                  teacher_restart_share=0.3,
                  student=NetSize(16, 1, 2, 32), student_lr=3e-3, student_max_steps=4,
                  start_target=1.0, start_eval_every=2, budget_tokens=600, milestones=(0.25, 0.5, 0.75, 1.0),
                  arm_lr=1e-3, arm_batch=8, sft_reuse=1, prompts_per_step=2, generations=2, teacher_samples=2,
                  chunk_tokens=6, chunks_per_completion=2, max_arm_steps=4, max_new_tokens=24, eval_batch=16, seeds=1,
                  batch_size=8, recovery_n=8, teacher_min=0.0, recovery_min=0.0, recovery_flawed_min=0.0,
                  start_band=(0.0, 1.0)),
    "small": Scale(n_train=4000, n_test=400, n_dev=200, teacher=NetSize(96, 3, 4, 288), teacher_steps=4800,
                   teacher_lr=3e-3, teacher_restart_share=0.3, student=NetSize(64, 2, 4, 192), student_lr=1e-3,
                   student_max_steps=3000, start_target=0.37, start_eval_every=20, budget_tokens=50_000,
                   milestones=(0.125, 0.25, 0.5, 1.0), arm_lr=1e-4, arm_batch=16, sft_reuse=2, prompts_per_step=4,
                   generations=4, teacher_samples=4, chunk_tokens=8, chunks_per_completion=2, max_arm_steps=5000),
    "large": Scale(n_train=40000, n_test=1000, n_dev=500, teacher=NetSize(256, 6, 8, 768), teacher_steps=8000,
                   teacher_lr=1e-3, teacher_restart_share=0.3, student=NetSize(128, 3, 4, 384), student_lr=1e-3,
                   student_max_steps=10000, start_target=0.37, start_eval_every=50, budget_tokens=1_000_000,
                   milestones=(0.125, 0.25, 0.5, 1.0), arm_lr=3e-4, arm_batch=32, sft_reuse=2, prompts_per_step=8,
                   generations=8, teacher_samples=8, chunk_tokens=10, chunks_per_completion=3, max_arm_steps=20000,
                   seeds=5),
}

TASKS = ("arith", "lists")
CONTROL_ARMS = ("no-training", "sft", "opd")
# the cold `--scale small` run: the controls, omniopd train's default signal, the paper's loss
# and the noise floor
DEFAULT_ARMS = ("no-training", "sft", "opd", "omniopd", "omniopd-paper", "noise-floor")
# per-arm learning rates from a `--lr-sweep` (dev accuracy at the full budget); none recorded
# yet at small: every arm runs at Scale.arm_lr (RESULTS.md says why)
TUNED_LR: dict[str, float] = {}


def scale_with(name: str, **changes) -> Scale:
    return dataclasses.replace(SCALES[name], **changes)


def _log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- work in worker processes ---------------------------------------------------------------------
_CTX: dict = {}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("omniopd").setLevel(logging.WARNING)


def _context(job: dict):
    from bench.lab.prepare import prepare_task

    key = (job["task"], job["run_dir"])
    if key not in _CTX:
        _CTX[key] = prepare_task(job["scale"], job["task"], job["data_seed"], Path(job["cache_dir"]),
                                 Path(job["run_dir"]) / job["task"], retrain=job.get("retrain", False))
    return _CTX[key]


def _redirect(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a", buffering=1)
    old = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = f
    return f, old


def _job(job: dict) -> dict:
    """One unit of work in a worker: 'prepare' (a task's instrument + checks) or an arm x seed."""
    _init_worker()
    from bench.lab import arms, checks

    log = Path(job["run_dir"]) / "logs" / f"{job['label']}.log"
    f, old = _redirect(log)
    t0 = time.perf_counter()
    try:
        ctx = _context(job)
        if job["kind"] == "prepare":
            return {"job": job["label"], "info": ctx.info, "checks": checks.before_arms(ctx), "wall_s": time.perf_counter() - t0}
        arm = arms.ARMS[job["arm"]]
        budget = arms.Budget(tuple(job["budgets"]), job["scale"].budget_unit, job["scale"].price_card)
        records = arms.run_arm(arm, ctx, job["seed"], job["lr"], budget, job.get("noise_l2"))
        for r in records:
            r["sweep"] = job.get("sweep", False)
        return {"job": job["label"], "records": records, "wall_s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - reported per job; the lab goes on with the others
        traceback.print_exc()
        return {"job": job["label"], "error": f"{type(exc).__name__}: {exc}", "log": str(log), "wall_s": time.perf_counter() - t0}
    finally:
        sys.stdout, sys.stderr = old
        f.close()


class Runner:
    """Runs jobs in a process pool (inline with workers=1); results arrive on a queue."""

    def __init__(self, workers: int):
        import queue

        self.workers = workers
        self.results: queue.Queue = queue.Queue()
        self.inline: list[dict] = []
        self.pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker) if workers > 1 else None

    def submit(self, job: dict) -> None:
        if self.pool is None:
            self.inline.append(job)
        else:
            self.pool.apply_async(_job, (job,), callback=self.results.put,
                                  error_callback=lambda e: self.results.put({"job": job["label"], "error": repr(e),
                                                                             "log": "", "wall_s": 0.0}))

    def next_result(self) -> dict:
        if self.pool is None and self.results.empty():
            self.results.put(_job(self.inline.pop(0)))
        return self.results.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def run_lab(scale: Scale, arm_names: list[str], *, tasks: list[str], seeds: int, data_seed: int, run_dir: Path,
            first_seed: int = 0,
            cache_dir: Path, workers: int = 1, lr_sweep: list[float] | None = None, arm_lr: float | None = None,
            retrain: bool = False, ignore_checks: bool = False, on_update=None) -> dict:
    """The whole lab (see module docstring); `on_update(report)` after every finished job.

    Each task goes through its phases on its own (instrument and checks, the controls, the
    positive control, the other arms, the noise floor), so one task's arms run while another
    task's teacher still trains."""
    from bench.lab import arms as armmod
    from bench.lab import checks
    from bench.lab.report import budget_of

    t_start = time.perf_counter()
    budgets = scale.budgets()
    report: dict = {"scale": dataclasses.asdict(scale), "tasks": tasks, "seeds": seeds, "data_seed": data_seed,
                    "arms": arm_names, "budgets": budgets, "budget_unit": scale.budget_unit,
                    "price_card": scale.price_card, "checks": {}, "records": [], "sweep_records": [],
                    "errors": [], "lr": {}, "instrument": {}, "job_wall_s": {}, "stopped": {}}

    def update() -> None:
        report["total_s"] = time.perf_counter() - t_start
        if on_update is not None:
            on_update(report)

    base = {"scale": scale, "data_seed": data_seed, "cache_dir": str(cache_dir), "run_dir": str(run_dir)}

    def lr_of(arm: str) -> float:
        if armmod.ARMS[arm].kind in ("none", "noise"):
            return 0.0
        return arm_lr if arm_lr is not None else TUNED_LR.get(arm, scale.arm_lr)

    def job(arm: str, task: str, seed: int, lr: float, **kw) -> dict:
        return {**base, "kind": "arm", "arm": arm, "task": task, "seed": seed, "lr": lr, "budgets": budgets,
                "label": f"{arm}:{task}:s{seed}:lr{lr:g}", **kw}

    def log_checks(task: str, names: list[str]) -> None:
        for n in names:
            c = report["checks"][task][n]
            if n == "positive_control":
                _log(f"check {task:<6} positive_control  {'passed' if c['passed'] else 'FAILED'}  "
                     + "; ".join(f"{a} {v.get('accuracy', float('nan')):.3f}±{v.get('se', float('nan')):.3f} "
                                 f"(gain {v.get('gain', float('nan')):+.3f})" for a, v in c["arms"].items()))
                continue
            _log(f"check {task:<6} {n:<17} {c.get('figure', float('nan')):.3f}  {'passed' if c.get('passed') else 'FAILED'}  "
                 + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items()
                             if k not in ('figure', 'passed')))

    def plan(task: str):
        """The task's phases; each `yield` is a list of jobs that must all finish first."""
        # only the prepare job retrains: the arm jobs load what it cached (in any worker)
        yield [{**base, "kind": "prepare", "task": task, "label": f"prepare:{task}", "retrain": retrain}]
        cs = report["checks"].get(task, {})
        log_checks(task, list(cs))
        failed = [n for n, c in cs.items() if not c.get("passed")]
        if failed and not ignore_checks:
            report["stopped"][task] = f"instrument check(s) failed: {', '.join(failed)}"
            _log(f"STOP {task}: {report['stopped'][task]}")
            return
        controls = [a for a in CONTROL_ARMS if a in arm_names]
        others = [a for a in arm_names if a not in controls and armmod.ARMS[a].kind != "noise"]
        for names in (controls, others):
            trained = [a for a in names if armmod.ARMS[a].kind not in ("none", "noise")]
            if lr_sweep and trained:
                # the same sweep for every arm, on seed 0; the dev accuracy at the full budget picks
                yield [job(a, task, 0, lr, sweep=True) for a in trained for lr in lr_sweep]
                for a in trained:
                    rs = [r for r in report["sweep_records"] if r["arm"] == a and r["task"] == task
                          and budget_of(r) == budgets[-1]]
                    if rs:
                        report["lr"][f"{a}:{task}"] = max(rs, key=lambda r: (r.get("dev_accuracy", 0.0), -r["lr"]))["lr"]
                        chosen = report["lr"][f"{a}:{task}"]
                        report["records"] += [{**r, "sweep": False} for r in report["sweep_records"]
                                              if r["arm"] == a and r["task"] == task and r["lr"] == chosen]
            jobs = []
            for a in names:
                lr = report["lr"].setdefault(f"{a}:{task}", lr_of(a))
                jobs += [job(a, task, seed, lr) for seed in range(first_seed, first_seed + seeds)
                         if not (lr_sweep and a in trained and seed == 0)]
            yield jobs
            if names is controls:
                start = report["checks"][task]["start_accuracy"]["figure"]
                ran = tuple(a for a in ("sft", "opd") if a in arm_names)  # the controls this run has
                report["checks"][task]["positive_control"] = checks.positive_control(report["records"], task, budgets[-1], start,
                                                                                     arms=ran or ("sft", "opd"))
                log_checks(task, ["positive_control"])
                if (not report["checks"][task]["positive_control"]["passed"] and not ignore_checks
                        and {"sft", "opd"} <= set(arm_names)):
                    report["stopped"][task] = "positive control failed"
                    _log(f"STOP {task}: {report['stopped'][task]}")
                    return
        if "noise-floor" in arm_names:
            moved = {}
            for b in budgets:
                l2s = [r["weights_l2"] for r in report["records"] if r["task"] == task and budget_of(r) == b
                       and armmod.ARMS[r["arm"]].kind not in ("none", "noise")]
                moved[b] = sum(l2s) / len(l2s) if l2s else 0.0
            report["lr"][f"noise-floor:{task}"] = 0.0
            yield [job("noise-floor", task, seed, 0.0, noise_l2=moved) for seed in range(first_seed, first_seed + seeds)]

    def done(res: dict) -> None:
        report["job_wall_s"][res["job"]] = res["wall_s"]
        if "error" in res:
            report["errors"].append(res)
            _log(f"{res['job']}: ERROR {res['error']} (log {res.get('log')})")
        elif "checks" in res:
            task = res["job"].split(":")[1]
            report["checks"][task] = res["checks"]
            report["instrument"][task] = res["info"]
            _log(f"{task}: instrument ready ({res['wall_s']:.0f}s)")
        else:
            rs = res["records"]
            (report["sweep_records"] if rs and rs[0].get("sweep") else report["records"]).extend(rs)
            last = rs[-1] if rs else {}
            _log(f"{res['job']:<40} acc {last.get('accuracy', float('nan')):.3f}  t1 {last.get('accuracy_t1', float('nan')):.3f}  "
                 f"tokens {last.get('teacher_tokens', 0):>7.0f}  ${last.get('teacher_usd', 0):.3f}  steps {last.get('steps', 0):>5}  {res['wall_s']:.0f}s")
        update()

    runner = Runner(workers)
    gens = {t: plan(t) for t in tasks}
    left: dict[str, int] = {}

    def advance(task: str) -> None:
        while True:
            try:
                jobs = next(gens[task])
            except StopIteration:
                left.pop(task, None)
                return
            if jobs:
                break
        left[task] = len(jobs)
        for j in jobs:
            runner.submit(j)

    try:
        for t in tasks:
            advance(t)
        while left:
            res = runner.next_result()
            done(res)
            task = res["job"].split(":")[1]
            left[task] -= 1
            if left[task] == 0:
                advance(task)
        update()
        return report
    finally:
        runner.close()


def config_key(scale: Scale, tasks: list[str], data_seed: int) -> str:
    from providers.base import stable_hash

    return stable_hash({"scale": dataclasses.asdict(scale), "tasks": tasks, "data_seed": data_seed})[:8]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from bench.lab import report as rep
    from bench.lab.arms import ARMS

    p = argparse.ArgumentParser(prog="python -m bench.lab.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated arms, or 'all': {', '.join(ARMS)}")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated task families: {', '.join(TASKS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: the scale's, 3 for small)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds run are first-seed .. first-seed + seeds - 1 (more seeds for an earlier run's file)")
    p.add_argument("--data-seed", type=int, default=1234, help="seed of the problems (fresh problems: another value)")
    p.add_argument("--budget", type=int, default=None, help="teacher tokens per arm, the last milestone (default: the scale's)")
    p.add_argument("--budget-usd", type=float, default=None,
                   help="teacher dollars per arm, the last milestone: milestones in dollars instead of tokens")
    p.add_argument("--milestones", default=None,
                   help="comma-separated fractions of the budget where every arm is measured (default: the scale's)")
    p.add_argument("--price-card", default="claude-haiku-4-5",
                   help="the model whose list prices (providers/capabilities.py) price every teacher call")
    p.add_argument("--arm-lr", type=float, default=None, help="one learning rate for every trained arm (default: tuned per arm)")
    p.add_argument("--lr-sweep", default=None, help="comma-separated learning rates: every trained arm runs each on seed 0, "
                   "the best dev accuracy at the full budget is kept for all seeds")
    p.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    p.add_argument("--name", default=None, help="results name: bench/lab/results/<name>.json (default: the scale)")
    p.add_argument("--results-dir", default="bench/lab/results")
    p.add_argument("--out", default=None, help="run directory (default runs/lab/<name>-<config key>)")
    p.add_argument("--cache-dir", default="runs/lab/cache", help="trained teachers and starts, keyed by their config")
    p.add_argument("--retrain", action="store_true", help="ignore cached teachers and starts (a cold run)")
    p.add_argument("--ignore-checks", action="store_true", help="run the arms even if an instrument check fails (diagnosis only)")
    args = p.parse_args(argv)
    names = list(ARMS) if args.arms == "all" else args.arms.split(",")
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        p.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(ARMS)}")
    tasks = args.tasks.split(",")
    if bad := [t for t in tasks if t not in TASKS]:
        p.error(f"unknown task(s) {', '.join(bad)}; known: {', '.join(TASKS)}")
    changes: dict = {"budget_tokens": args.budget} if args.budget else {}
    if args.budget_usd is not None:
        changes["budget_usd"] = args.budget_usd
    changes["price_card"] = args.price_card
    if args.milestones:
        changes["milestones"] = tuple(float(x) for x in args.milestones.split(","))
    from bench.lab.dollars import price_card

    price_card(args.price_card)  # an unknown or unpriced card fails here, not in every worker
    scale = scale_with(args.scale, **changes)
    seeds = args.seeds or scale.seeds
    name = args.name or args.scale
    run_dir = Path(args.out or f"runs/lab/{name}-{config_key(scale, tasks, args.data_seed)}")
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.lab.run " + " ".join(sys.argv[1:] if argv is None else argv)

    def save(report: dict) -> None:
        report["command"] = command
        report["run_dir"] = str(run_dir)
        rep.annotate(report)
        tmp = results / f".{name}.json.tmp"
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(results / f"{name}.json")
        if report["records"]:
            rep.plot(report, results / name)

    sweep = [float(x) for x in args.lr_sweep.split(",")] if args.lr_sweep else None
    _log(f"run dir {run_dir}; results {results / name}.json; arms {', '.join(names)}; tasks {', '.join(tasks)}; "
         f"{seeds} seeds; budgets {scale.budgets()}; {args.workers} workers")
    report = run_lab(scale, names, tasks=tasks, seeds=seeds, first_seed=args.first_seed, data_seed=args.data_seed, run_dir=run_dir,
                     cache_dir=Path(args.cache_dir), workers=args.workers, lr_sweep=sweep, arm_lr=args.arm_lr,
                     retrain=args.retrain, ignore_checks=args.ignore_checks, on_update=save)
    save(report)
    print(rep.checks_md(report))
    print()
    print(rep.table_md(report))
    print(f"\nwhole run {report['total_s']:.0f} s; wrote {results / name}.json and plots")
    return 1 if report["stopped"] else 0  # a failed check on any task


if __name__ == "__main__":
    sys.exit(main())
