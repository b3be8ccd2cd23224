"""`omniopd train`: every knob of `TrainConfig` as a flag (see `omniopd train --help`)."""

from __future__ import annotations

import argparse
import contextlib
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
        if record.levelno < logging.WARNING or getattr(record, "_omniopd_once", None) is self:
            return True  # the same record reaching a second handler is not a repeat
        key = (record.name, str(record.msg))
        if key in self.seen:
            return False
        self.seen.add(key)
        record._omniopd_once = self
        return True


@contextlib.contextmanager
def quiet_console():
    """The console of a run: our log lines, one progress bar, each warning once (Python's
    `warnings` already show once per place; library deprecation notices are off, `omniopd.cli`).

    Model loading/saving bars ("Loading weights", "Writing model shards") are off through
    huggingface_hub's switch, which transformers' bars follow; TRL's per-step dict and the
    per-rollout bars are handled by the trainer setup (`omniopd.run_log.quiet_console`). The
    once-filter lives for the run only, so a later run in the same process shows its own warnings.
    """
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore", "sentence_transformers", "google_genai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    once = _Once()
    targets = [*logging.getLogger().handlers, logging.getLogger("transformers")]  # its own handler's records too
    for t in targets:
        t.addFilter(once)
    try:
        yield
    finally:
        for t in targets:
            t.removeFilter(once)


def run(args: argparse.Namespace) -> int:
    from omniopd.train import run_train, summarize

    from omniopd.memory import return_freed_memory_to_the_os

    cfg = config_from_args(args)
    return_freed_memory_to_the_os()  # the step's peak is what it holds, not glibc's fragmented heap
    with quiet_console():
        result = run_train(cfg)
    print(summarize(result))
    return 0
