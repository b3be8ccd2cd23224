"""`omniopd report RUN_DIR`: one self-contained HTML page of what a run did and what the teacher taught.

Writes `RUN_DIR/report/index.html` (or `--out DIR`), the PNG plots it embeds (as `data:` URIs,
so the page alone is the whole report) and, under `inspect/`, a fork-inspector page for each
completion that holds the highest- or the lowest-π̂ fork of a step, linked from the fork table.
Everything comes from the run directory (`omniopd.run_data`), so it works on a run that is
still writing (a partial last line of metrics.jsonl is skipped and said so) and on a replayed
run alike; re-running it refreshes the pages.

Page sections: summary figures, plots, the fork table, the teacher table (who wrote the
samples the forks used: spec, continuation mode, exact share, samples, tokens, stored cost),
the resolved config, and what could not be shown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from omniopd.html_page import esc, num, page, png_data_uri
from omniopd.inspect_fork import inspect_filename, render_html
from omniopd.report_plots import make_plots
from omniopd.run_data import Fork, RunData


@dataclass
class ReportResult:
    index: Path
    plots: list[Path]
    inspect_pages: list[Path]
    missing: list[str]
    problems: list[str]


def extreme_forks(forks: list[Fork]) -> list[tuple[str, Fork]]:
    """Per step, the fork with the highest π̂ and the one with the lowest (one row if they are the same)."""
    by_step: dict[int, list[Fork]] = {}
    for f in forks:
        by_step.setdefault(f.step, []).append(f)
    out = []
    for step in sorted(by_step):
        fs = by_step[step]
        hi = max(fs, key=lambda f: f.pihat)
        lo = min(fs, key=lambda f: f.pihat)
        out.append(("highest π̂", hi))
        if lo is not hi:
            out.append(("lowest π̂", lo))
    return out


def _summary(run: RunData) -> str:
    m = run.metrics[-1] if run.metrics else {}
    forks = sum(int(r.get("forks", 0)) for r in run.metrics)
    rows = [
        ("status", run.status()),
        ("steps logged", len(run.metrics)),
        ("steps with recorded forks", len(run.steps())),
        ("audited forks", forks),
        ("teacher samples", int(m.get("teacher_samples_total", sum(r.get("teacher_samples", 0) for r in run.metrics)))),
        ("teacher spend (USD, this run)", f"{float(m.get('teacher_cost_usd_total', 0.0)):.5f}"),
        ("teacher", run.setting("teacher", "spec", "?")),
        ("student", run.setting("student", "model", "?")),
        ("method", run.setting("method", "name", "omniopd")),
    ]
    if run.replayed_from():
        rows.append(("replayed from", run.replayed_from()))
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table id="summary">{cells}</table>'


def _fork_table(rows: list[tuple[str, Fork]]) -> str:
    if not rows:
        return '<p class="sub">No recorded forks (no episodes.sqlite, or no step audited yet).</p>'
    head = ("<tr><th>step</th><th>which</th><th>completion</th><th>fork</th><th>π̂</th><th>k/N</th><th>π̄</th>"
            "<th>student chunk</th><th>teacher samples (φ)</th><th></th></tr>")
    body = []
    for which, f in rows:
        link = f"inspect/{inspect_filename(f.step, f.completion)}#fork-{f.index + 1}"
        samples = "<br>".join(f"{num(s.phi, 2)} · {esc(s.compared[:70])}" for s in f.samples[:3])
        if len(f.samples) > 3:
            samples += f"<br>… {len(f.samples) - 3} more"
        kn = f.k / f.n_eff if f.n_eff else None
        body.append(
            f'<tr class="fork-row" data-step="{f.step}"><td class="num">{f.step}</td><td>{esc(which)}</td>'
            f'<td class="num">{f.completion}</td><td class="num">{f.index + 1}</td><td class="num">{f.pihat:.3f}</td>'
            f'<td class="num">{num(kn)}</td><td class="num">{f.pibar:.3f}</td><td class="mono">{esc(f.student_text[:90])}</td>'
            f'<td class="mono">{samples}</td><td><a href="{esc(link)}">inspect</a></td></tr>')
    return f'<table id="fork-table">{head}{"".join(body)}</table>'


def _teacher_table(run: RunData) -> str:
    rows = run.teacher_table()
    if not rows:
        return '<p class="sub">No stored teacher samples.</p>'
    head = ("<tr><th>teacher (spec)</th><th>model</th><th>mode</th><th>exact share</th><th>samples</th>"
            "<th>input tokens</th><th>output tokens</th><th>cost (USD, as stored)</th></tr>")
    body = "".join(
        f'<tr><td>{esc(r["teacher"])}</td><td>{esc(r["model"])}</td><td>{esc(r["mode"] or "–")}</td>'
        f'<td class="num">{r["exact_share"]:.2f}</td><td class="num">{r["samples"]}</td>'
        f'<td class="num">{r["input_tokens"]:.0f}</td><td class="num">{r["output_tokens"]:.0f}</td>'
        f'<td class="num">{r["cost_usd"]:.5f}</td></tr>' for r in rows)
    note = ('<p class="sub">Counts the distinct samples the recorded forks used; cost is what each sample cost when '
            "it was bought (a replay or a cache hit pays nothing again; the summary shows this run's spend).</p>")
    return f'<table id="teacher-table">{head}{body}</table>{note}'


def build_report(run: RunData, out_dir: str | Path | None = None, clock=time.time) -> ReportResult:
    """Write the report for `run` (see the module docstring)."""
    out = Path(out_dir) if out_dir is not None else (run.run_dir or Path(".")) / "report"
    out.mkdir(parents=True, exist_ok=True)
    plots, missing = make_plots(run, out)
    forks = run.forks(with_prefix=False) if run.episode_steps() else []  # the table shows no prefix
    rows = extreme_forks(forks)
    alpha = run.setting("scorer", "alpha")
    pages = []
    (out / "inspect").mkdir(exist_ok=True)
    for step, comp in dict.fromkeys((f.step, f.completion) for _, f in rows):
        path = out / "inspect" / inspect_filename(step, comp)
        path.write_text(render_html(run.completion(step, comp), run_name=run.name, alpha=alpha, back="../index.html"),
                        encoding="utf-8")
        pages.append(path)
    figures = "".join(
        f'<figure id="plot-{p.name}"><img class="plot" alt="{esc(p.title)}" src="{png_data_uri(p.path)}">'
        f"<figcaption>{esc(p.caption)}</figcaption></figure>" for p in plots)
    notes = [*missing, *run.problems]
    config = yaml.safe_dump(run.config, sort_keys=False, allow_unicode=True) if run.config else "(no config recorded)"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(clock()))
    body = (
        f"<h1>omniopd run report</h1><p class=\"sub\">{esc(run.name)} · generated {esc(when)}</p>"
        f"{_summary(run)}"
        + (f'<ul class="problems">{"".join(f"<li>{esc(n)}</li>" for n in notes)}</ul>' if notes else "")
        + f'<h2>Plots</h2><div class="plots" id="plots">{figures}</div>'
        f'<h2>Forks: the highest and the lowest π̂ of each step</h2><div id="forks">{_fork_table(rows)}</div>'
        f"<h2>Teachers</h2>{_teacher_table(run)}"
        f'<h2>Resolved config</h2><details><summary>config.yaml (every knob, as the run resolved it)</summary>'
        f'<pre id="config">{esc(config)}</pre></details>'
    )
    index = out / "index.html"
    index.write_text(page(f"omniopd report — {run.name}", body), encoding="utf-8")
    return ReportResult(index, [p.path for p in plots], pages, missing, list(run.problems))
