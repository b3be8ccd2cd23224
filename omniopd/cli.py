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
    "collect": "omniopd.cli_collect",
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
    _no_abbreviations(parser)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """`--max-step 2` must not silently run as `--max-steps 2`: prefixes are not flags."""
    parser.allow_abbrev = False
    for p in _subparsers(parser):
        _no_abbreviations(p)


def _chosen(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The innermost (sub)parser the command line selects."""
    for p in _subparsers(parser):
        name = p.prog.split()[-1]
        if name in argv:
            return _chosen(p, argv[argv.index(name) + 1:])
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parse_args`, with a "did you mean" for each unknown flag."""
    from omniopd.preflight import did_you_mean

    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        p = _chosen(parser, argv)
        flags = [o for o in p._option_string_actions if o.startswith("--")]
        hints = [f"{x}{did_you_mean(x.split('=')[0], flags)}" for x in extra if x.startswith("-")]
        p.error("unrecognized arguments: " + (", ".join(hints) if hints else " ".join(extra)))
    return args


def main(argv: list[str] | None = None) -> int:
    # No hub, no telemetry: every model this tool loads is local unless the user says otherwise.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # transformers 5 / TRL deprecation notices about their own internals: nothing a user can act on
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl)\.")
    parser = build_parser()
    args = parse_args(parser, argv)
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
