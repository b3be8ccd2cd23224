"""`omniopd report`, `omniopd inspect`, `omniopd export`: see what a run's teacher taught.

- `report RUN_DIR [--out DIR]`: RUN_DIR/report/index.html (self-contained) + its PNG plots +
  inspector pages for the highest- and lowest-π̂ forks of each step.
- `inspect RUN_DIR [--step N] [--completion I] [--html PATH] [--no-terminal]`: one completion,
  tokens shaded by entropy, each audited chunk beside the teacher's continuations with φ, k,
  π̄, π̂ — printed with rich and written as an HTML page.
- `export RUN_DIR_OR_CACHE --to DIR|FILE [--format parquet|jsonl|hf] [--push-to-hub REPO]`: one
  row per audited fork, loadable with `datasets`.

Steps are numbered as in metrics.jsonl (see `omniopd.run_data`). This module registers all
three subcommands (omniopd.cli lists it once, under "report").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a run (plots, forks, teachers, config)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (the --output of omniopd train); may still be running")
    p.add_argument("--out", default=None, help="where to write the report (default RUN_DIR/report)")
    p.set_defaults(run=run_report)

    p = sub.add_parser("inspect", help="show one completion's forks: entropy, audited chunks, teacher samples, φ, π̂",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory or its episodes.sqlite")
    p.add_argument("--step", type=int, default=None, help="training step (as in metrics.jsonl; default: the last recorded)")
    p.add_argument("--completion", type=int, default=None,
                   help="completion index within the step (default: the one holding the step's highest-π̂ fork)")
    p.add_argument("--html", default=None, help="write the page here (default RUN_DIR/report/inspect/step-N-completion-I.html)")
    p.add_argument("--no-terminal", action="store_true", help="only write the HTML page")
    p.add_argument("--width", type=int, default=120, help="terminal width for the rich rendering")
    p.set_defaults(run=run_inspect)

    p = sub.add_parser("export", help="export the audited forks (student chunk, teacher samples, φ, π̂) as a dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="RUN_DIR_OR_CACHE", help="a run directory, its episodes.sqlite, or a cache file holding recorded runs")
    p.add_argument("--to", default=None, help="output file (parquet, jsonl) or directory (hf; for parquet/jsonl: DIR/forks.EXT)")
    p.add_argument("--format", default="parquet", choices=("parquet", "jsonl", "hf"), help="file format (default parquet)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub dataset repo (needs a reachable hub and a token)")
    p.add_argument("--public", action="store_true", help="with --push-to-hub: a public repo (default private)")
    p.set_defaults(run=run_export)


def run_report(args) -> int:
    from omniopd.report import build_report
    from omniopd.run_data import RunData

    with RunData.open(args.run_dir) as data:
        result = build_report(data, args.out)
    for line in result.problems + result.missing:
        print(f"note: {line}", file=sys.stderr)
    print(f"wrote {result.index} ({len(result.plots)} plots, {len(result.inspect_pages)} inspector pages)")
    return 0


def _pick_completion(data, step: int) -> int:
    forks = data.forks(step, with_text=False)
    return max(forks, key=lambda f: f.pihat).completion if forks else 0


def run_inspect(args) -> int:
    from omniopd.errors import ReportError
    from omniopd.inspect_fork import inspect_filename, render_html, render_terminal
    from omniopd.run_data import RunData

    with RunData.open(args.run_dir) as data:
        steps = data.steps()
        if not steps:
            raise ReportError(f"{args.run_dir}: no recorded step to inspect yet (episodes.sqlite is empty or missing)")
        step = steps[-1] if args.step is None else args.step
        index = _pick_completion(data, step) if args.completion is None else args.completion
        completion = data.completion(step, index)
        alpha = data.setting("scorer", "alpha")
        if not args.no_terminal:
            from rich.console import Console

            render_terminal(completion, Console(width=args.width), alpha=alpha, width=args.width)
        base = data.run_dir if data.run_dir is not None else Path(data.name).parent
        out = Path(args.html) if args.html else base / "report" / "inspect" / inspect_filename(step, index)
        out.parent.mkdir(parents=True, exist_ok=True)
        back = "../index.html" if args.html is None and (base / "report" / "index.html").exists() else None
        out.write_text(render_html(completion, run_name=data.name, alpha=alpha, back=back), encoding="utf-8")
        print(f"step {step}, completion {index} (the step has {data.completions_in(step)}, from 0): "
              f"{len(completion.forks)} forks; wrote {out}")
    return 0


def run_export(args) -> int:
    from omniopd.errors import ReportError
    from omniopd.export import export, push_to_hub
    from omniopd.run_data import RunData

    if args.to is None and args.push_to_hub is None:
        raise ReportError("export needs --to DIR|FILE, --push-to-hub REPO, or both")
    with RunData.open(args.source) as data:
        if args.to is not None:
            path, n = export(data, args.to, args.format)
            print(f"wrote {n} forks to {path} ({args.format})")
        if args.push_to_hub is not None:
            repo = push_to_hub(data, args.push_to_hub, private=not args.public)
            print(f"pushed to the Hub dataset {repo}")
    return 0
