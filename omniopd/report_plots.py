"""The run report's figures: one PNG per question a user asks of a run (matplotlib, Agg backend).

`make_plots(run, out_dir)` writes each figure the run has data for and returns
`(plots, missing)`: `Plot(name, title, path, caption)` in display order, and one line per
figure that could not be drawn saying which field was absent (an older run, a run with
`--no-episodes`, a method that records no chunk weights). Nothing here reads files: the data
comes from `omniopd.run_data.RunData`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omniopd.run_data import RunData

_DPI = 110
_SIZE = (6.4, 3.4)


@dataclass
class Plot:
    name: str
    title: str
    path: Path
    caption: str


def series(rows: list[dict[str, Any]], *keys: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the first key present in each row; rows without one are left out."""
    xs, ys = [], []
    for r in rows:
        for k in keys:
            v = r.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                xs.append(float(r["step"]))
                ys.append(float(v))
                break
    return xs, ys


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("step")
    return fig, ax


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _lines(ax, rows, specs: list[tuple[str, tuple[str, ...]]]) -> bool:
    drawn = False
    for label, keys in specs:
        xs, ys = series(rows, *keys)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
    return drawn


def _pihat_distribution(run: RunData, ax) -> bool:
    import numpy as np

    by_step = {}
    for f in run.forks(with_text=False):
        by_step.setdefault(f.step, []).append(f.pihat)
    if not by_step:
        xs, lo = series(run.metrics, "pihat_min")
        _, mean = series(run.metrics, "reward_mean", "pihat_mean")
        _, hi = series(run.metrics, "pihat_max")
        if not xs or len(lo) != len(hi) or len(mean) != len(xs):
            return False
        ax.fill_between(xs, lo, hi, alpha=0.25, label="min..max (metrics.jsonl)")
        ax.plot(xs, mean, marker="o", markersize=3, label="mean")
        ax.legend(fontsize=8)
        ax.set_ylim(0, 1)
        return True
    steps = sorted(by_step)
    rng = np.random.default_rng(0)
    for s in steps:
        v = np.asarray(by_step[s])
        ax.scatter(s + rng.uniform(-0.18, 0.18, len(v)), v, s=8, alpha=0.45, color="tab:blue", linewidths=0)
    q = np.array([np.percentile(by_step[s], [25, 50, 75]) for s in steps])
    ax.fill_between(steps, q[:, 0], q[:, 2], alpha=0.2, color="tab:orange", label="25-75%")
    ax.plot(steps, q[:, 1], color="tab:orange", marker="o", markersize=3, label="median")
    ax.plot(steps, [float(np.mean(by_step[s])) for s in steps], color="tab:red", linestyle="--", label="mean")
    ax.set_ylim(0, 1)
    ax.set_ylabel(r"$\hat\pi$ per fork")
    ax.legend(fontsize=8)
    return True


def _spend(run: RunData, ax) -> bool:
    xs, per = series(run.metrics, "teacher_cost_usd")
    xt, total = series(run.metrics, "teacher_cost_usd_total")
    if not xs and not xt:
        return False
    if xs:
        ax.bar(xs, per, width=0.6, alpha=0.5, label="per step")
    ax.set_ylabel("USD per step")
    if xt:
        ax2 = ax.twinx()
        ax2.plot(xt, total, color="tab:red", marker="o", markersize=3, label="running total")
        ax2.set_ylabel("USD, running total")
        ax2.set_ylim(bottom=0)
        ax2.legend(fontsize=8, loc="upper right")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(bottom=0)
    return True


def _evals(run: RunData, ax) -> bool:
    evals = run.evals()
    if not evals:
        return False
    names, greedy = [n for n, _ in evals], [float(d["greedy_accuracy"]) for _, d in evals]
    xs = list(range(len(names)))
    ax.bar(xs, greedy, alpha=0.7, label="greedy", width=0.5)
    for i, (_, d) in enumerate(evals):
        ax.annotate(f"{greedy[i]:.3f} (n={d.get('n', '?')})", (i, greedy[i]), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")
        for k, v in (d.get("pass_at_k") or {}).items():
            ax.scatter([i], [float(v)], marker="_", s=300, label=f"pass@{k}" if i == 0 else None)
    ax.set_xticks(xs, names)
    ax.set_xlim(-0.75, len(xs) - 0.25)
    ax.set_xlabel("eval file")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return True


def _heldout(run: RunData, ax) -> bool:
    rows = run.heldout()
    if not rows:
        return False
    usd = [float(r["teacher_usd"]) for r in rows]
    acc = [float(r["greedy_accuracy"]) for r in rows]
    ax.plot(usd, acc, marker="o")
    for r, x, y in zip(rows, usd, acc):
        ax.annotate(f"step {r['step']}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("teacher spend so far (USD)")
    ax.set_ylabel(f"held-out greedy accuracy (n={rows[-1].get('n', '?')})")
    ax.set_ylim(0, 1)
    return True


def _line_plot(specs: list[tuple[str, tuple[str, ...]]], ylabel: str, ylim01: bool = False) -> Callable[[RunData, Any], bool]:
    def draw(run: RunData, ax) -> bool:
        ok = _lines(ax, run.metrics, specs)
        ax.set_ylabel(ylabel)
        if ylim01:
            ax.set_ylim(0, 1.02)
        return ok

    return draw


# name, title, caption, drawing function, the fields it needs (for the "missing" line)
FIGURES: list[tuple[str, str, str, Callable[[RunData, Any], bool], str]] = [
    ("pihat", r"$\hat\pi$ per fork, by step", "Each dot is one audited fork's chunk weight π̂ = (k + α·π̄)/(N + α); "
     "the band is the middle half, the line the median.", _pihat_distribution, "episodes (chunks[].pihat) or pihat_min/max"),
    ("agreement", r"Teacher agreement k/N and student confidence $\bar\pi$", "Mean over the step's forks of k/N "
     "(mean φ) and of π̄ (the student's geometric-mean token probability in the chunk).",
     _line_plot([("mean k/N", ("k_over_n_mean",)), (r"mean $\bar\pi$", ("pibar_mean",)), (r"mean $\hat\pi$", ("reward_mean", "pihat_mean"))],
                "", ylim01=True), "k_over_n_mean, pibar_mean"),
    ("kl", r"KL($\pi_{ref}\,\|\,\pi_\theta$) on unaudited tokens", "Mean exact KL to the base student on the tokens no fork covers "
     "(what the β anchor holds down).", _line_plot([("KL", ("kl",))], "nats per token"), "kl"),
    ("loss", "Loss terms", "The chunk term −Σ π̂·log π over audited tokens and the β·KL term, each per completion "
     "token; `loss` is TRL's total.", _line_plot([("chunk term", ("chunk_loss",)), (r"$\beta\cdot$KL term", ("kl_loss",)),
                                                  ("loss", ("loss",))], ""), "chunk_loss, kl_loss"),
    ("length", "Completion length", "Mean completion length in tokens.",
     _line_plot([("tokens", ("completion_length_mean", "completions/mean_length"))], "tokens"), "completion_length_mean"),
    ("spend", "Teacher spend", "Bars: USD paid to the teacher in the step (samples served from the cache cost "
     "nothing); line: the running total.", _spend, "teacher_cost_usd, teacher_cost_usd_total"),
    ("cache", "Sample-cache hit rate", "Share of the step's requested teacher samples served from the cache "
     "(1.0 throughout a replay).", _line_plot([("hit rate", ("cache_hit_rate",))], "share", ylim01=True), "cache_hit_rate"),
    ("heldout", "What the teacher dollars bought", "Held-out greedy accuracy (--eval-every, --eval-data) against the "
     "run's teacher spend at that step; the first point is the student before training.", _heldout,
     "heldout.jsonl (train with --eval-every N --eval-data FILE)"),
    ("eval", "Evaluation accuracy", "From the eval*.json files in the run directory (omniopd eval --output).",
     _evals, "an eval.json in the run directory"),
]


_PLAIN = {r"$\hat\pi$": "π̂", r"$\bar\pi$": "π̄", r"$\pi_{ref}\,\|\,\pi_\theta$": "π_ref ‖ π_θ", r"$\beta\cdot$": "β·"}


def plain(title: str) -> str:
    """A figure title without matplotlib's mathtext, for HTML and messages."""
    for tex, text in _PLAIN.items():
        title = title.replace(tex, text)
    return title


def make_plots(run: RunData, out_dir: str | Path) -> tuple[list[Plot], list[str]]:
    """Draw every figure `run` has data for into `out_dir` (see the module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots, missing = [], []
    for name, title, caption, draw, needs in FIGURES:
        fig, ax = _figure()
        ax.set_title(title, fontsize=10)
        path = out / f"{name}.png"
        if draw(run, ax):
            _save(fig, path)
            plots.append(Plot(name, plain(title), path, caption))
        else:
            import matplotlib.pyplot as plt

            plt.close(fig)
            path.unlink(missing_ok=True)
            missing.append(f"{plain(title)}: not in this run (needs {needs})")
    return plots, missing
