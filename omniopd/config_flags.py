"""CLI flags generated from the config dataclasses, so the two never drift apart.

Every knob of `TrainConfig` becomes one flag (its `flag` metadata, else `--field-name`), with
its help line, its type and its choices. Flags default to "not given" (argparse.SUPPRESS) so
that precedence flag > config file > default is decided in `build_config`, not here.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from omniopd.config import SECTIONS, TrainConfig, build_config, field_base_type, load_config_file


def _parse_optional(base: type):
    def parse(text: str) -> Any:
        if text.lower() in ("none", "null", ""):
            return None
        return base(text)

    parse.__name__ = base.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None) -> None:
    """Add `--config` and one flag per knob, grouped by section (all sections, or only `sections`)."""
    parser.add_argument("--config", default=None, help="YAML config file (sections: " + ", ".join(SECTIONS) + ")")
    seen: set[str] = set()
    for section, cls in SECTIONS.items():
        if sections is not None and section not in sections:
            continue
        group = parser.add_argument_group(section)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            if flag in seen:
                raise RuntimeError(f"duplicate flag {flag} ({section}.{f.name})")  # a programming error
            seen.add(flag)
            base, optional = field_base_type(hints[f.name])
            kwargs: dict[str, Any] = {"dest": f"cfg:{section}.{f.name}", "default": argparse.SUPPRESS}
            default_text = "" if f.default is dataclasses.MISSING else f" (default: {f.default})"
            kwargs["help"] = f.metadata.get("help", "") + default_text
            if base is bool:
                kwargs["action"] = "store_true"
            else:
                kwargs["type"] = _parse_optional(base) if optional else base
                kwargs["metavar"] = base.__name__.upper()
                if f.metadata.get("choices"):
                    kwargs["choices"] = f.metadata["choices"]
                    kwargs.pop("metavar")
            group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Resolve the config: defaults < --config file < flags given on the command line."""
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    file_values = load_config_file(args.config) if getattr(args, "config", None) else None
    return build_config(file_values, overrides)
