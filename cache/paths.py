"""Where the default cache lives: one user-level file, so every run shares what it bought.

`OMNIOPD_CACHE_DIR` wins, then `$XDG_CACHE_HOME/omniopd`, then `~/.cache/omniopd`. The
environment is passed in (not read at import), so tests can point it anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CACHE_FILE = "teacher.sqlite"


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("OMNIOPD_CACHE_DIR"):
        return Path(env["OMNIOPD_CACHE_DIR"]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "omniopd"
    return Path("~/.cache/omniopd").expanduser()


def default_cache_path(env: Mapping[str, str] | None = None) -> Path:
    """The user-level cache file used when `--cache` is not given."""
    return default_cache_dir(env) / CACHE_FILE


def resolve_cache_path(path: str | None, env: Mapping[str, str] | None = None) -> Path:
    """`--cache` as given (with ~ expanded), or the user-level default when unset."""
    return Path(path).expanduser() if path else default_cache_path(env)
