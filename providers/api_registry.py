"""Teacher specs for the APIs: aliases, keys and base URLs from the environment, construction.

`--teacher` accepts an alias (`claude-haiku`), `anthropic:MODEL`, `openai:MODEL`,
`gemini:MODEL` or `openai-compatible:MODEL` (with `--teacher-base-url`); `local:…` specs are
the local registry's (`providers/registry.py`), which calls `build_api_teacher_with_fallback`
for everything `is_api_spec` accepts.

Keys come only from the standard environment variables (never from config files, which are
saved with the run); base URLs from `--teacher-base-url`, else the SDK's standard variable.
Neither appears in `identity()` beyond the endpoint URL, in reprs, logs or error messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from omniopd.config import TeacherConfig
from omniopd.errors import ConfigError, TeacherAuthError
from providers.base import Teacher
from providers.capabilities import lookup, with_overrides
from providers.fallback import FallbackTeacher
from providers.limits import LimitsRegistry, default_registry
from providers.retry import RetryPolicy

# One table of short names. Targets are family names: dated snapshots also work as MODEL.
ALIASES: dict[str, str] = {
    "claude-haiku": "anthropic:claude-haiku-4-5",
    "claude-sonnet": "anthropic:claude-sonnet-4-6",
    "claude-opus": "anthropic:claude-opus-4-6",
    "gpt-mini": "openai:gpt-5-mini",
    "gpt-4o-mini": "openai:gpt-4o-mini",
    "gemini-flash": "gemini:gemini-2.5-flash",
    "gemini-flash-lite": "gemini:gemini-2.5-flash-lite",
}


@dataclass(frozen=True)
class Provider:
    module: str
    cls: str
    key_envs: tuple[str, ...]
    base_url_envs: tuple[str, ...]
    needs_key: bool = True


PROVIDERS: dict[str, Provider] = {
    "anthropic": Provider("providers.anthropic_teacher", "AnthropicTeacher", ("ANTHROPIC_API_KEY",), ("ANTHROPIC_BASE_URL",)),
    "openai": Provider("providers.openai_teacher", "OpenAITeacher", ("OPENAI_API_KEY",), ("OPENAI_BASE_URL",)),
    # google-genai prefers GOOGLE_API_KEY when both are set; so do we.
    "gemini": Provider("providers.gemini_teacher", "GeminiTeacher", ("GOOGLE_API_KEY", "GEMINI_API_KEY"), ("GOOGLE_GEMINI_BASE_URL",)),
    # Never OPENAI_API_KEY: that key must not be sent to a third-party server.
    "openai-compatible": Provider("providers.openai_compatible", "OpenAICompatibleTeacher", ("OPENAI_COMPATIBLE_API_KEY",), (), needs_key=False),
}


def canonical_spec(spec: str) -> str:
    """Expand aliases: `claude-haiku` -> `anthropic:claude-haiku-4-5`."""
    return ALIASES.get(spec.strip(), spec.strip())


def is_api_spec(spec: str) -> bool:
    provider, _, model = canonical_spec(spec).partition(":")
    return provider in PROVIDERS and bool(model)


def parse_spec(spec: str) -> tuple[str, str]:
    provider, sep, model = canonical_spec(spec).partition(":")
    if not sep or provider not in PROVIDERS or not model:
        known = ", ".join([*ALIASES, *(f"{p}:MODEL" for p in PROVIDERS), "local:ID_OR_PATH"])
        raise ConfigError(f"--teacher {spec!r}: not a teacher spec; use one of {known}")
    return provider, model


def api_key_for(provider: str, env: Mapping[str, str]) -> str | None:
    for name in PROVIDERS[provider].key_envs:
        if env.get(name):
            return env[name]
    return None


def load_template_tokenizer(spec: str) -> Any:
    """A tokenizer carrying the chat template of the server's model (for raw continuation)."""
    from omniopd.models import load_tokenizer

    return load_tokenizer(spec)


def build_api_teacher(cfg: TeacherConfig, spec: str | None = None, *, env: Mapping[str, str] | None = None,
                      limits: LimitsRegistry | None = None, policy: RetryPolicy | None = None,
                      tokenizer: Any = None) -> Teacher:
    """Build the API teacher for `spec` (default `cfg.spec`). Raises `TeacherAuthError` when the
    provider needs a key and none is set, `ConfigError` for a bad spec or missing base URL."""
    env = os.environ if env is None else env
    provider, model = parse_spec(spec or cfg.spec)
    info = PROVIDERS[provider]
    key = api_key_for(provider, env)
    if info.needs_key and not key:
        raise TeacherAuthError(f"teacher {provider}:{model}: no API key; set {' or '.join(info.key_envs)} "
                               "(or choose another --teacher)")
    base_url = cfg.base_url or next((env[v] for v in info.base_url_envs if env.get(v)), None)
    if provider == "openai-compatible" and not base_url:
        raise ConfigError("teacher openai-compatible: needs the server's URL; pass --teacher-base-url http://HOST:PORT/v1")
    caps = lookup(provider, model)
    continuation = None if cfg.continuation == "auto" else cfg.continuation
    if continuation is None and provider == "openai-compatible" and (cfg.template or tokenizer is not None):
        continuation = "raw"
    caps = with_overrides(caps, continuation=continuation, max_n=cfg.max_n)
    if caps.continuation in ("raw", "continue_final") and provider != "openai-compatible":
        raise ConfigError(f"--teacher-continuation {caps.continuation}: only openai-compatible servers support it")
    policy = policy or RetryPolicy(max_attempts=cfg.max_attempts, deadline_s=cfg.deadline_s)
    lim = (limits or default_registry()).get(provider, model, concurrency=cfg.concurrency,
                                             rpm=cfg.rpm or caps.default_rpm, tpm=cfg.tpm)
    kwargs: dict[str, Any] = dict(caps=caps, api_key=key, base_url=base_url, timeout_s=cfg.timeout_s,
                                  policy=policy, limits=lim, spec=f"{provider}:{model}")
    if provider == "openai-compatible":
        if tokenizer is None and cfg.template and caps.continuation == "raw":
            tokenizer = load_template_tokenizer(cfg.template)
        kwargs["tokenizer"] = tokenizer
    import importlib

    cls = getattr(importlib.import_module(info.module), info.cls)
    return cls(model, **kwargs)


def build_api_teacher_with_fallback(cfg: TeacherConfig, spec: str | None, local_factory: Callable[[], Teacher],
                                    **kw: Any) -> Teacher:
    """The API teacher wrapped in `FallbackTeacher` (unless `cfg.no_fallback`): an auth error or
    outage during the run switches to the local teacher; a missing key starts the run on it
    only when `--fallback-teacher` was named (`cfg.fallback`), else it is a `TeacherAuthError`."""
    from omniopd.config import DEFAULT_FALLBACK_TEACHER

    if cfg.no_fallback:
        return build_api_teacher(cfg, spec, **kw)
    canon = "{}:{}".format(*parse_spec(spec or cfg.spec))
    fallback = cfg.fallback or DEFAULT_FALLBACK_TEACHER
    try:
        primary = build_api_teacher(cfg, spec, **kw)
    except TeacherAuthError as exc:
        if cfg.fallback is None:
            raise
        return FallbackTeacher(None, local_factory, spec=canon, fallback_spec=fallback, reason=str(exc))
    return FallbackTeacher(primary, local_factory, spec=canon, fallback_spec=fallback)
