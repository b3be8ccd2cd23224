"""`omniopd train`: every knob of `TrainConfig` as a flag (see `omniopd train --help`)."""

from __future__ import annotations

import argparse
import logging

from omniopd.config_flags import add_config_flags, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="distill a teacher into the student (OmniOPD)",
        description="Distill a teacher into a student: rollouts, peak-entropy forks, teacher continuations, "
        "similarity-weighted chunks, TRL update with a KL anchor. Precedence: flag > --config file > default.",
    )
    add_config_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from omniopd.train import run_train, summarize

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore", "sentence_transformers", "google_genai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = config_from_args(args)
    result = run_train(cfg)
    print(summarize(result))
    return 0
