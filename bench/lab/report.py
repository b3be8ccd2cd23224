"""Summaries of a lab results file: per-arm learning curves, the goal, tables and plots.

A results file (`bench/lab/results/<name>.json`) holds `records` (one per arm x task x seed x
budget milestone) and `checks` (per task). Everything here is computed from those two, so a
table can be rebuilt from a committed file: `python -m bench.lab.report bench/lab/results/X.json`.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path


def mean_se(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan"))


def curves(report: dict) -> dict[str, dict[str, list[dict]]]:
    """task -> arm -> one point per budget: mean/se of accuracy, accuracy_t1, kl, l2, tokens."""
    out: dict[str, dict[str, list[dict]]] = {}
    recs = report.get("records", [])
    for task in sorted({r["task"] for r in recs}):
        out[task] = {}
        for arm in _arm_order(report, task):
            pts = []
            rs = [r for r in recs if r["task"] == task and r["arm"] == arm]
            for b in sorted({r["budget_tokens"] for r in rs}):
                at = [r for r in rs if r["budget_tokens"] == b]
                pt = {"budget_tokens": b, "seeds": len(at), "lr": at[0]["lr"]}
                for key in ("accuracy", "accuracy_t1", "kl_to_start", "weights_l2", "teacher_tokens", "steps", "train_s"):
                    vals = [r[key] for r in at if r.get(key) is not None]
                    pt[key], pt[key + "_se"] = mean_se(vals)
                pts.append(pt)
            out[task][arm] = pts
    return out


def _arm_order(report: dict, task: str) -> list[str]:
    seen = [r["arm"] for r in report.get("records", []) if r["task"] == task]
    order = [a for a in report.get("arms", []) if a in seen]
    return order + [a for a in dict.fromkeys(seen) if a not in order]


def _access(report: dict, arm: str) -> str:
    for r in report.get("records", []):
        if r["arm"] == arm:
            return r["access"]
    return "?"


def goal(report: dict) -> dict[str, dict]:
    """Per task, at the full budget: the best black-box arm other than SFT, its margin over SFT
    in combined standard errors, and the share of the teacher-student gap it closed."""
    out = {}
    for task, arms in curves(report).items():
        checks = report.get("checks", {}).get(task, {})
        start = checks.get("start_accuracy", {}).get("figure")
        teacher = checks.get("teacher_accuracy", {}).get("figure")
        last = {a: pts[-1] for a, pts in arms.items() if pts}
        sft = last.get("sft")
        cands = {a: p for a, p in last.items() if _access(report, a) == "black-box" and a != "sft"}
        if not cands or sft is None or start is None or teacher is None:
            continue
        rows = {}
        for a, p in cands.items():
            se = math.sqrt(_z(p["accuracy_se"]) ** 2 + _z(sft["accuracy_se"]) ** 2)
            rows[a] = {"accuracy": p["accuracy"], "se": p["accuracy_se"], "minus_sft": p["accuracy"] - sft["accuracy"],
                       "margin_se": (p["accuracy"] - sft["accuracy"]) / se if se > 0 else float("nan"),
                       "gap_closed": (p["accuracy"] - start) / (teacher - start) if teacher != start else float("nan")}
        best = max(rows, key=lambda a: rows[a]["accuracy"])
        b = rows[best]
        out[task] = {"best_black_box": best, **b, "sft": sft["accuracy"], "sft_se": sft["accuracy_se"],
                     "sft_gap_closed": (sft["accuracy"] - start) / (teacher - start) if teacher != start else float("nan"),
                     "start": start, "teacher": teacher,
                     "beats_sft_2se": b["margin_se"] > 2, "closes_half_gap": b["gap_closed"] >= 0.5,
                     "reached": b["margin_se"] > 2 and b["gap_closed"] >= 0.5, "arms": rows}
    return out


def _tokens(b: int) -> str:
    return f"{b / 1000:g}k" if b >= 1000 else str(b)


def _z(x: float) -> float:
    return 0.0 if x != x else x


def _f(x: float, se: float | None = None, d: int = 3) -> str:
    if x != x:
        return "n/a"
    return f"{x:.{d}f}" if se is None or se != se else f"{x:.{d}f} ± {se:.{d}f}"


def checks_md(report: dict) -> str:
    lines = ["| task | check | figure | passed | detail |", "| --- | --- | --- | --- | --- |"]
    for task, cs in report.get("checks", {}).items():
        for name, c in cs.items():
            detail = ", ".join(f"{k} {_f(v) if isinstance(v, float) else v}" for k, v in c.items()
                               if k not in ("figure", "passed", "arms"))
            if name == "positive_control":
                detail = "; ".join(f"{a}: {_f(v.get('accuracy', float('nan')), v.get('se'))} (gain {_f(v.get('gain', float('nan')))})"
                                   for a, v in c.get("arms", {}).items())
            lines.append(f"| {task} | {name} | {_f(c.get('figure', float('nan')))} | {'yes' if c.get('passed') else 'NO'} | {detail} |")
    return "\n".join(lines)


def table_md(report: dict) -> str:
    """Per task: one row per arm; greedy accuracy at every milestone, the rest at the last."""
    from bench.lab.arms import ARMS

    parts = []
    for task, arms in curves(report).items():
        budgets = sorted({p["budget_tokens"] for pts in arms.values() for p in pts})
        head = " | ".join(f"acc @{_tokens(b)}" for b in budgets)
        parts.append(f"**{task}**\n")
        parts.append(f"| arm | access | lr | {head} | T=1 acc | KL to start | weight L2 | teacher tokens | steps | seeds | train s |")
        parts.append("| --- | --- | --- | " + " | ".join("---" for _ in budgets) + " | --- | --- | --- | --- | --- | --- | --- |")
        for arm, pts in arms.items():
            by_b = {p["budget_tokens"]: p for p in pts}
            cells = " | ".join(_f(by_b[b]["accuracy"], by_b[b]["accuracy_se"]) if b in by_b else "" for b in budgets)
            p = pts[-1]
            parts.append(f"| {arm} | {_access(report, arm)} | {p['lr']:g} | {cells} | {_f(p['accuracy_t1'], p['accuracy_t1_se'])} | "
                         f"{_f(p['kl_to_start'])} | {_f(p['weights_l2'], d=2)} | {p['teacher_tokens']:.0f} | {p['steps']:.0f} | "
                         f"{p['seeds']} | {p['train_s']:.0f} |")
        parts.append("")
    g = goal(report)
    if g:
        parts.append("| task | best black-box arm | its accuracy | SFT | margin over SFT (s.e.) | gap closed (SFT's) | goal reached |")
        parts.append("| --- | --- | --- | --- | --- | --- | --- |")
        for task, x in g.items():
            parts.append(f"| {task} | {x['best_black_box']} | {_f(x['accuracy'], x['se'])} | {_f(x['sft'], x['sft_se'])} | "
                         f"{x['margin_se']:.1f} | {x['gap_closed']:.2f} ({x['sft_gap_closed']:.2f}) | {'yes' if x['reached'] else 'no'} |")
    legend = [f"- `{a}`: {ARMS[a].help}" for a in dict.fromkeys(r["arm"] for r in report.get("records", [])) if a in ARMS]
    return "\n".join(parts + [""] + legend)


def plot(report: dict, out_prefix: Path) -> list[Path]:
    """One figure per task: greedy (left) and T=1 (right) accuracy vs teacher tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task, arms in curves(report).items():
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
        checks = report.get("checks", {}).get(task, {})
        for ax, key, title in ((axes[0], "accuracy", "greedy"), (axes[1], "accuracy_t1", "temperature 1")):
            for arm, pts in arms.items():
                xs = [p["budget_tokens"] for p in pts]
                ys = [p[key] for p in pts]
                es = [_z(p[key + "_se"]) for p in pts]
                style = "--" if _access(report, arm) == "white-box" else (":" if _access(report, arm) == "none" else "-")
                ax.errorbar(xs, ys, yerr=es, fmt="o" + style, ms=3, capsize=2, label=arm)
            t = checks.get("teacher_accuracy", {})
            if t:
                ax.axhline(t.get("figure" if key == "accuracy" else "accuracy_t1"), color="gray", ls="--", lw=1, label="teacher")
            ax.set_xscale("log")
            ax.set_xlabel("teacher tokens (budget milestone)")
            ax.set_title(f"{task}: held-out {title} accuracy")
        axes[0].set_ylabel("accuracy (mean ± s.e. over seeds)")
        axes[1].legend(fontsize=6, loc="best")
        fig.tight_layout()
        path = Path(f"{out_prefix}-{task}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def merge(reports: list[dict]) -> dict:
    """Several results files of the same instrument (same scale, data seed, checks) as one:
    records and arms concatenated, checks from the first file that has them per task."""
    out = dict(reports[0])
    out["records"] = [r for rep in reports for r in rep.get("records", [])]
    out["arms"] = list(dict.fromkeys(a for rep in reports for a in rep.get("arms", [])))
    out["checks"] = {}
    for rep in reports:
        for task, cs in rep.get("checks", {}).items():
            merged = out["checks"].setdefault(task, {})
            for name, c in cs.items():
                merged.setdefault(name, c)
    out["merged_from"] = [rep.get("command") for rep in reports]
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m bench.lab.report FILE [FILE ...] [--plot PREFIX]: tables (files merged)."""
    args = sys.argv[1:] if argv is None else argv
    prefix = None
    if "--plot" in args:
        i = args.index("--plot")
        prefix, args = Path(args[i + 1]), args[:i] + args[i + 2:]
    report = merge([json.loads(Path(a).read_text()) for a in args])
    print(checks_md(report))
    print()
    print(table_md(report))
    if prefix is not None:
        for path in plot(report, prefix):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
