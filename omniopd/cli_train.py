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


class _Once(logging.Filter):
    """Each kind of warning once: a record whose (logger, message template) was shown is dropped.
    Repeats are still counted where they matter (e.g. `teacher_failed_chunks` in metrics.jsonl)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


_ONCE: _Once | None = None  # the one filter, so repeated runs in a process do not stack filters


def quiet_console() -> None:
    """The console of a run: our log lines, one progress bar, each warning once (Python's
    `warnings` already show once per place; library deprecation notices are off, `omniopd.cli`).

    Model loading/saving bars ("Loading weights", "Writing model shards") are off through
    huggingface_hub's switch, which transformers' bars follow; TRL's per-step dict and the
    per-rollout bars are handled by the trainer setup (`omniopd.run_log.quiet_console`).
    """
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    before = list(logging.getLogger().handlers)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ours = [h for h in logging.getLogger().handlers if h not in before]  # only the console handler we made
    for noisy in ("httpx", "httpx2", "httpcore", "sentence_transformers", "google_genai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    global _ONCE
    if _ONCE is None:
        _ONCE = _Once()
    _ONCE.seen.clear()  # once per run: a second run in the same process (a notebook, tests) warns again
    for handler in ours:  # never a host's handlers (pytest's capture, a notebook's, an app's own)
        if _ONCE not in handler.filters:
            handler.addFilter(_ONCE)
    if _ONCE not in logging.getLogger("transformers").filters:
        logging.getLogger("transformers").addFilter(_ONCE)  # its records that reach its own handler


def run(args: argparse.Namespace) -> int:
    from omniopd.train import run_train, summarize

    quiet_console()
    cfg = config_from_args(args)
    result = run_train(cfg)
    print(summarize(result))
    return 0
