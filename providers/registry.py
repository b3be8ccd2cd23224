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
    """Build the teacher named by `spec` (default `cfg.spec`).

    API specs (aliases like `claude-haiku`, `anthropic:M`, `openai:M`, `gemini:M`,
    `openai-compatible:M`) are wrapped in a `FallbackTeacher` that continues on `cfg.fallback`
    (built only if needed) unless `cfg.no_fallback`.
    """
    from providers.api_registry import build_api_teacher_with_fallback, is_api_spec, parse_spec

    spec = spec or cfg.spec
    kind, _, rest = spec.partition(":")
    if kind == "local":
        if not rest:
            raise ConfigError("teacher.spec: 'local:' needs a model, e.g. local:smollm2 or local:/path/to/model")
        return build_local_teacher(rest, spec)
    if is_api_spec(spec):
        from omniopd.config import DEFAULT_FALLBACK_TEACHER

        fallback = cfg.fallback or DEFAULT_FALLBACK_TEACHER
        if not fallback.startswith("local:"):
            raise ConfigError(f"--fallback-teacher {fallback!r}: must be a local:ID_OR_PATH teacher")
        return build_api_teacher_with_fallback(cfg, spec, lambda: build_teacher(cfg, fallback))
    parse_spec(spec)  # raises a ConfigError listing every accepted form
    raise AssertionError("unreachable")
