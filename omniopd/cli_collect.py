"""`omniopd collect`: buy teacher text ahead of training, live or through batch APIs (see `omniopd collect --help`).

The data, teacher, student and cache flags are `omniopd train`'s (generated from the same
config dataclasses); `CollectConfig` adds collect's own. A `--config` file may hold a
`collect:` section beside train's.
"""

from __future__ import annotations

import argparse

from omniopd.config import CollectConfig
from omniopd.config_flags import add_config_flags, config_from_args, section_values

SECTIONS = ("student", "teacher", "data", "cache", "scheduler", "learner", "method")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help="buy teacher solutions for a dataset ahead of training (live, or --batch at about half price)",
        description="Buy teacher text for --data and store it in the sample cache, where `omniopd train` finds it "
        "with no live request. --batch uses the provider's batch API (Anthropic, OpenAI, Gemini) at about half price; "
        "rerun the same command to resume (nothing is paid twice). --max-teacher-usd caps the spend (ledger in "
        "--collect-dir). Precedence: flag > --config file > default.",
    )
    add_config_flags(p, SECTIONS, extra={"collect": CollectConfig})
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from omniopd.cli_train import quiet_console
    from omniopd.collect import run_collect
    from omniopd.config import build_collect_config

    ccfg = build_collect_config(section_values(args, "collect"))
    # forks are OmniOPD's: their requests follow its signal (samples, continuation length), as a train run's would
    cfg = config_from_args(args, extra=("collect",), defaults={"method.name": "omniopd"} if ccfg.what == "forks" else None)
    with quiet_console():
        summary = run_collect(cfg, ccfg, echo=lambda line: print(line, flush=True))
    print(summary.table(), flush=True)
    if summary.refused:
        return 3  # stopped at the spend cap: what was bought is stored; raise the cap and rerun
    return 0 if summary.finished else 4
