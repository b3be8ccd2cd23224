"""Teacher specs -> Teacher objects. The only place that maps a `--teacher` string to a client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omniopd.errors import ConfigError
from providers.base import Teacher

if TYPE_CHECKING:
    from omniopd.config import TeacherConfig


def build_local_teacher(model_spec: str, spec: str | None = None) -> Teacher:
    """An in-process teacher from a model spec (hub id, directory, .gguf, or 'smollm2')."""
    from omniopd.models import load_causal_lm
    from providers.local import LocalTeacher

    model, tok = load_causal_lm(model_spec)
    return LocalTeacher(model, tok, spec=spec or f"local:{model_spec}")


def build_teacher(cfg: "TeacherConfig", spec: str | None = None) -> Teacher:
    """Build the teacher named by `spec` (default `cfg.spec`)."""
    spec = spec or cfg.spec
    kind, _, rest = spec.partition(":")
    if kind == "local":
        if not rest:
            raise ConfigError("teacher.spec: 'local:' needs a model, e.g. local:smollm2 or local:/path/to/model")
        return build_local_teacher(rest, spec)
    raise ConfigError(f"teacher.spec: unknown teacher {spec!r}; use local:ID_OR_PATH")
