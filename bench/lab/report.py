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


def budget_of(r: dict) -> float:
    """A record's milestone: dollars (`budget_usd`) when the run was in dollars, else tokens
    (`budget_tokens`: every results file before run 7)."""
    return r["budget_usd"] if r.get("budget_usd") is not None else r["budget_tokens"]


def unit_of(report: dict) -> str:
    """"usd" when the file's milestones are dollars, else "tokens"."""
    if report.get("budget_unit"):
        return report["budget_unit"]
    return "usd" if any(r.get("budget_usd") is not None for r in report.get("records", [])) else "tokens"


def budget_label(b: float, unit: str) -> str:
    return f"${b:g}" if unit == "usd" else _tokens(b)


def curves(report: dict) -> dict[str, dict[str, list[dict]]]:
    """task -> arm -> one point per milestone (`budget`, in the file's unit; token files also
    keep `budget_tokens`): mean/se of accuracy, accuracy_t1, kl, l2, tokens, dollars."""
    out: dict[str, dict[str, list[dict]]] = {}
    unit = unit_of(report)
    recs = [r for r in report.get("records", []) if (r.get("budget_usd") is not None) == (unit == "usd")]
    for task in sorted({r["task"] for r in recs}):
        out[task] = {}
        for arm in _arm_order(report, task):
            pts = []
            rs = [r for r in recs if r["task"] == task and r["arm"] == arm]
            for b in sorted({budget_of(r) for r in rs}):
                at = [r for r in rs if budget_of(r) == b]
                pt = {"budget": b, "unit": unit, "seeds": len(at), "lr": at[0]["lr"]}
                if unit == "tokens":
                    pt["budget_tokens"] = b
                for key in ("accuracy", "accuracy_t1", "kl_to_start", "weights_l2", "teacher_tokens", "teacher_usd",
                            "teacher_input_tokens", "steps", "train_s"):
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
        unit = unit_of(report)
        budgets = sorted({p["budget"] for pts in arms.values() for p in pts})
        head = " | ".join(f"acc @{budget_label(b, unit)}" for b in budgets)
        parts.append(f"**{task}**\n")
        parts.append(f"| arm | access | lr | {head} | T=1 acc | KL to start | weight L2 | teacher out tokens | teacher in tokens "
                     "| teacher $ | steps | seeds | train s |")
        parts.append("| --- | --- | --- | " + " | ".join("---" for _ in budgets) + " | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for arm, pts in arms.items():
            by_b = {p["budget"]: p for p in pts}
            cells = " | ".join(_f(by_b[b]["accuracy"], by_b[b]["accuracy_se"]) if b in by_b else "" for b in budgets)
            p = pts[-1]
            parts.append(f"| {arm} | {_access(report, arm)} | {p['lr']:g} | {cells} | {_f(p['accuracy_t1'], p['accuracy_t1_se'])} | "
                         f"{_f(p['kl_to_start'])} | {_f(p['weights_l2'], d=2)} | {p['teacher_tokens']:.0f} | "
                         f"{_f(p['teacher_input_tokens'], d=0)} | {_f(p['teacher_usd'], d=3)} | {p['steps']:.0f} | "
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


# --- equal-dollar comparison, the instrument's resolution, the default it picks -----------------
# arms that read the reference solutions (an oracle and its control): no user can run them, so
# they bound what a recipe could give and are never the default
REFERENCE_ARMS = ("oracle-repair", "sft-reference")


def _records_at(report: dict, task: str, arm: str, b: float) -> list[float]:
    unit = unit_of(report)
    return [r["accuracy"] for r in report.get("records", []) if r["task"] == task and r["arm"] == arm
            and (r.get("budget_usd") is not None) == (unit == "usd") and budget_of(r) == b]


def versus(report: dict, baseline: str = "sft") -> dict[str, dict[str, list[dict]]]:
    """task -> arm -> per milestone: the arm's mean and s.e., its difference from `baseline` at
    the same milestone (equal dollars in a dollar run), and that difference in combined s.e."""
    out: dict[str, dict[str, list[dict]]] = {}
    for task, arms in curves(report).items():
        base = {p["budget"]: p for p in arms.get(baseline, [])}
        out[task] = {}
        for arm, pts in arms.items():
            rows = []
            for p in pts:
                q = base.get(p["budget"])
                d = p["accuracy"] - q["accuracy"] if q else float("nan")
                se = math.sqrt(_z(p["accuracy_se"]) ** 2 + _z(q["accuracy_se"]) ** 2) if q else float("nan")
                rows.append({"budget": p["budget"], "accuracy": p["accuracy"], "se": p["accuracy_se"], "seeds": p["seeds"],
                             "minus_" + baseline: d, "margin_se": d / se if se and se > 0 else float("nan")})
            out[task][arm] = rows
    return out


def detectable_difference(report: dict) -> dict[str, dict]:
    """Per task: the smallest difference between two arms the file can call at 2 s.e.

    `sd_seed`: the seed-to-seed standard deviation of held-out accuracy, pooled over every
    trained arm x milestone with >= 2 seeds; `mdd_seeds = 2 * sqrt(2) * sd_seed / sqrt(n)` is
    what the tables' s.e. can resolve between two arms of n seeds. The held-out split is fixed
    (every arm is measured on the same `n_test` problems), so its draw is not in the seed
    spread: `mdd_with_heldout` adds the binomial variance of a difference of two accuracies
    near p measured on n_test independent problems, 2 p (1 - p) / n_test (an upper bound: the
    two arms' errors on the same problems are positively correlated)."""
    out = {}
    n_test = report.get("scale", {}).get("n_test")
    trained = {r["arm"] for r in report.get("records", []) if r.get("steps", 0) > 0}
    for task, arms in curves(report).items():
        ss, dof, accs, n_seeds = 0.0, 0, [], []
        for arm in arms:
            if arm not in trained:
                continue
            for p in arms[arm]:
                xs = _records_at(report, task, arm, p["budget"])
                if len(xs) >= 2:
                    m = statistics.fmean(xs)
                    ss += sum((x - m) ** 2 for x in xs)
                    dof += len(xs) - 1
                    accs.append(m)
                    n_seeds.append(len(xs))
        if not dof:
            continue
        sd = math.sqrt(ss / dof)
        n = min(n_seeds)
        pbar = statistics.fmean(accs)
        row = {"sd_seed": sd, "seeds": n, "dof": dof, "mdd_seeds": 2 * math.sqrt(2) * sd / math.sqrt(n)}
        if n_test:
            row["n_test"] = n_test
            row["mdd_with_heldout"] = 2 * math.sqrt(2 * sd ** 2 / n + 2 * pbar * (1 - pbar) / n_test)
        out[task] = row
    return out


def dollars_to_match(report: dict, baseline: str = "sft") -> dict[str, dict[str, float | None]]:
    """task -> arm -> the smallest milestone at which the arm's mean reaches the baseline's mean
    at the largest milestone, as a share of the largest (None: never within the file)."""
    out: dict[str, dict[str, float | None]] = {}
    for task, arms in curves(report).items():
        base = arms.get(baseline)
        if not base:
            continue
        goal_acc, last = base[-1]["accuracy"], base[-1]["budget"]
        out[task] = {arm: next((p["budget"] / last for p in pts if p["accuracy"] >= goal_acc), None)
                     for arm, pts in arms.items()}
    return out


def default_arm(report: dict, baseline: str = "sft") -> dict:
    """The recipe this file says `omniopd train` should default to: a black-box, trained,
    arm that does not read the reference solutions (`REFERENCE_ARMS`) and beats `baseline` by > 2 s.e. at each of the two largest milestones on
    every task (the best such by mean accuracy at the largest milestone, averaged over tasks);
    otherwise the baseline itself. Returns the arm and the per-task margins behind the choice."""
    vs = versus(report, baseline)
    tasks = list(vs)
    trained = {r["arm"] for r in report.get("records", []) if r.get("steps", 0) > 0}
    cands = {a for t in tasks for a in vs[t] if a != baseline and a in trained and a not in REFERENCE_ARMS
             and _access(report, a) == "black-box"}
    qualified, margins = {}, {}
    for a in sorted(cands):
        ms = {t: [r["margin_se"] for r in vs[t].get(a, [])[-2:]] for t in tasks}
        margins[a] = ms
        seeded = all(r["seeds"] >= 2 for t in tasks for r in vs[t].get(a, [])[-2:])  # a real s.e. on both sides
        if seeded and all(len(m) == 2 and all(x > 2 for x in m) for m in ms.values()):
            qualified[a] = statistics.fmean(vs[t][a][-1]["accuracy"] for t in tasks)
    if not tasks or baseline not in {a for t in tasks for a in vs[t]}:
        return {"arm": None, "why": f"no {baseline} rows to compare with"}
    if qualified:
        best = max(qualified, key=qualified.get)
        return {"arm": best, "why": f"beats {baseline} by > 2 s.e. at the two largest milestones on every task",
                "margins_se": margins}
    return {"arm": baseline, "why": f"no arm beats {baseline} by > 2 s.e. at the two largest milestones on every task",
            "margins_se": margins}


def annotate(report: dict) -> dict:
    """Adds the derived verdicts to a results file in place: `default_arm` (and why),
    `detectable_difference`, `dollars_to_match_sft`."""
    if not report.get("records"):
        return report
    d = default_arm(report)
    report["default_arm"] = d["arm"]
    report["default_arm_why"] = d
    report["detectable_difference"] = detectable_difference(report)
    report["dollars_to_match_sft"] = dollars_to_match(report)
    return report


def versus_md(report: dict, baseline: str = "sft") -> str:
    """One table per task: every arm at every milestone, mean ± s.e. and its difference from
    the baseline in combined s.e.; then the resolution and the default."""
    unit = unit_of(report)
    parts = []
    for task, arms in versus(report, baseline).items():
        budgets = sorted({r["budget"] for rows in arms.values() for r in rows})
        parts.append(f"**{task}** (greedy held-out accuracy; in brackets: minus {baseline}, in s.e.)\n")
        parts.append("| arm | " + " | ".join(budget_label(b, unit) for b in budgets) + " |")
        parts.append("| --- | " + " | ".join("---" for _ in budgets) + " |")
        for arm, rows in arms.items():
            by_b = {r["budget"]: r for r in rows}
            cells = []
            for b in budgets:
                r = by_b.get(b)
                if r is None:
                    cells.append("")
                    continue
                cell = _f(r["accuracy"], r["se"])
                if arm != baseline and r["margin_se"] == r["margin_se"]:
                    cell += f" ({r['minus_' + baseline]:+.3f}, {r['margin_se']:+.1f})"
                cells.append(cell)
            parts.append(f"| {arm} | " + " | ".join(cells) + " |")
        parts.append("")
    dd = detectable_difference(report)
    if dd:
        parts.append("| task | seed sd | seeds | smallest difference at 2 s.e. (seeds) | (with the held-out draw) |")
        parts.append("| --- | --- | --- | --- | --- |")
        for task, x in dd.items():
            parts.append(f"| {task} | {x['sd_seed']:.3f} | {x['seeds']} | {x['mdd_seeds']:.3f} | "
                         f"{_f(x.get('mdd_with_heldout', float('nan')))} |")
        parts.append("")
    d = default_arm(report, baseline)
    parts.append(f"default arm: **{d['arm']}** ({d['why']})")
    return "\n".join(parts)


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
                xs = [p["budget"] for p in pts]
                ys = [p[key] for p in pts]
                es = [_z(p[key + "_se"]) for p in pts]
                style = "--" if _access(report, arm) == "white-box" else (":" if _access(report, arm) == "none" else "-")
                ax.errorbar(xs, ys, yerr=es, fmt="o" + style, ms=3, capsize=2, label=arm)
            t = checks.get("teacher_accuracy", {})
            if t:
                ax.axhline(t.get("figure" if key == "accuracy" else "accuracy_t1"), color="gray", ls="--", lw=1, label="teacher")
            ax.set_xscale("log")
            ax.set_xlabel(f"teacher {'dollars (' + report.get('price_card', 'claude-haiku-4-5') + ' list prices)' if unit_of(report) == 'usd' else 'tokens'} (budget milestone)")
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
    out["job_wall_s"] = {k: v for rep in reports for k, v in rep.get("job_wall_s", {}).items()}
    out["errors"] = [e for rep in reports for e in rep.get("errors", [])]
    out["total_s"] = sum(rep.get("total_s", 0.0) for rep in reports)
    out["merged_from"] = [rep.get("command") for rep in reports]
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m bench.lab.report FILE [FILE ...] [--plot PREFIX] [--out FILE]: tables (files
    merged); `--out` writes the merged file with its verdicts (`annotate`: `default_arm`, ...)."""
    args = sys.argv[1:] if argv is None else argv
    prefix = out = None
    if "--plot" in args:
        i = args.index("--plot")
        prefix, args = Path(args[i + 1]), args[:i] + args[i + 2:]
    if "--out" in args:
        i = args.index("--out")
        out, args = Path(args[i + 1]), args[:i] + args[i + 2:]
    report = annotate(merge([json.loads(Path(a).read_text()) for a in args]))
    if out is not None:
        out.write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {out}")
    print(checks_md(report))
    print()
    print(table_md(report))
    print()
    print(versus_md(report))
    if prefix is not None:
        for path in plot(report, prefix):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
