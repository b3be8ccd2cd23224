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


def add_config_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None,
                     extra: dict[str, type] | None = None) -> None:
    """Add `--config` and one flag per knob, grouped by section (all sections, or only `sections`),
    plus the knobs of `extra` sections (name -> dataclass) that `TrainConfig` does not hold."""
    names = list(SECTIONS) + list(extra or {})
    parser.add_argument("--config", default=None, help="YAML config file (sections: " + ", ".join(names) + ")")
    seen: set[str] = set()
    for section, cls in {**SECTIONS, **(extra or {})}.items():
        if sections is not None and section not in sections and section not in (extra or {}):
            continue
        add_section_flags(parser, section, cls, seen)


def add_section_flags(parser: argparse.ArgumentParser, section: str, cls: type, seen: set[str]) -> None:
    """One flag per field of the dataclass `cls`, in an argument group named `section`."""
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
        # argparse %-formats help text: a literal percent sign in a knob's help must be doubled
        kwargs["help"] = (f.metadata.get("help", "") + default_text).replace("%", "%%")
        if base is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _parse_optional(base) if optional else base
            kwargs["metavar"] = base.__name__.upper()
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
                kwargs.pop("metavar")
        group.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace, extra: tuple[str, ...] = (),
                     defaults: dict[str, Any] | None = None) -> TrainConfig:
    """Resolve the config: defaults < `defaults` (the caller's own, dotted) < --config file < flags.

    `extra` names sections the caller resolves itself (`collect`): they are left out here."""
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and k[4:].partition(".")[0] not in extra}
    file_values = load_config_file(args.config) if getattr(args, "config", None) else None
    for dotted, value in (defaults or {}).items():
        section, _, key = dotted.partition(".")
        in_file = isinstance(file_values, dict) and key in (file_values.get(section) or {})
        if dotted not in overrides and not in_file:
            overrides[dotted] = value
    if file_values and extra and isinstance(file_values, dict):
        file_values = {k: v for k, v in file_values.items() if k not in extra}
    return build_config(file_values, overrides)


def section_values(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """One extra section's values: its mapping in the --config file, then its flags."""
    file_values = load_config_file(args.config) if getattr(args, "config", None) else {}
    values = dict((file_values or {}).get(section) or {}) if isinstance(file_values, dict) else {}
    values.update({k[4:].partition(".")[2]: v for k, v in vars(args).items() if k.startswith(f"cfg:{section}.")})
    return values
