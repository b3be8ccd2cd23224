"""`omniopd` console script: a thin dispatcher over one module per subcommand.

Each subcommand module exposes `add_parser(subparsers)` and `run(args) -> int`; importing
them is lazy so `omniopd --help` stays fast. `OmniOPDError`s print their message (which says
what to do next) and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from omniopd.errors import OmniOPDError

# subcommand name -> module that implements it
COMMANDS: dict[str, str] = {
    "train": "omniopd.cli_train",
    "eval": "omniopd.cli_eval",
    "teacher": "omniopd.cli_teacher",
    "cache": "omniopd.cli_cache",
    "report": "omniopd.cli_report",  # also registers `inspect` and `export`
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omniopd",
        description="Distill a teacher you can only call into a student you train (OmniOPD).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # No hub, no telemetry: every model this tool loads is local unless the user says otherwise.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # transformers 5 / TRL deprecation notices about their own internals: nothing a user can act on
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl)\.")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except OmniOPDError as exc:
        print(f"omniopd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("omniopd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
