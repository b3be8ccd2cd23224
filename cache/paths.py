"""Where the default cache lives: one user-level file, so every run shares what it bought.

`$OMNIOPD_CACHE_DIR` wins; else omniopd's user-level state directory: `$OMNIOPD_HOME`, else
`$XDG_CACHE_HOME/omniopd`, else `~/.cache/omniopd` (the same root `omniopd.models` keeps
model conversions under). The environment is passed in or read at call time, never at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CACHE_FILE = "teacher.sqlite"


def omniopd_home(env: Mapping[str, str] | None = None) -> Path:
    """Root of omniopd's user-level state."""
    env = os.environ if env is None else env
    if env.get("OMNIOPD_HOME"):
        return Path(env["OMNIOPD_HOME"]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "omniopd"
    return Path("~/.cache/omniopd").expanduser()


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("OMNIOPD_CACHE_DIR"):
        return Path(env["OMNIOPD_CACHE_DIR"]).expanduser()
    return omniopd_home(env)


def default_cache_path(env: Mapping[str, str] | None = None) -> Path:
    """The user-level cache file used when `--cache` is not given."""
    return default_cache_dir(env) / CACHE_FILE


def resolve_cache_path(path: str | None, env: Mapping[str, str] | None = None) -> Path:
    """`--cache` as given (with ~ expanded), or the user-level default when unset."""
    return Path(path).expanduser() if path else default_cache_path(env)
