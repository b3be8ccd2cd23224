"""`--teacher` specs -> teacher clients: the one place for spec parsing, aliases, keys, fallback.

`providers/` holds the clients, which take everything as explicit keyword arguments (model,
key, base URL, capability row, retry policy, limits, an optional `httpx.AsyncClient`) and read
no environment. This module decides those arguments:

- **specs**: `parse_spec` is the only parser — an alias (`claude-haiku`), `anthropic:MODEL`,
  `openai:MODEL`, `gemini:MODEL`, `openai-compatible:MODEL` (with `--teacher-base-url`) or
  `local:ID_OR_PATH`;
- **keys**: `key_env_names(provider)` is the only function that says which environment
  variables a client may read, and `api_key` the only reader. No provider falls back to
  another provider's key: above all, `OPENAI_API_KEY` is never sent to a self-hosted
  `openai-compatible` server (nor the vLLM scorer), which reads `OPENAI_COMPATIBLE_API_KEY`
  only. Keys come from the environment only (config files are saved with the run);
- **base URLs**: `--teacher-base-url`, else the SDK's standard variable;
- **fallback**: API teachers are wrapped in `FallbackTeacher` on `--fallback-teacher`
  (built only if needed) unless `--no-fallback`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omniopd.errors import ConfigError, TeacherAuthError
from providers.base import Teacher
from providers.capabilities import lookup, with_overrides
from providers.fallback import FallbackTeacher
from providers.limits import LimitsRegistry, default_registry
from providers.retry import RetryPolicy

if TYPE_CHECKING:
    import httpx

    from omniopd.config import TeacherConfig

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


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed `--teacher`: `kind` is a provider name or "local"; `model` its model (or path)."""

    kind: str
    model: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.model}"

    @property
    def is_api(self) -> bool:
        return self.kind in PROVIDERS


def canonical_spec(spec: str) -> str:
    """Expand aliases: `claude-haiku` -> `anthropic:claude-haiku-4-5`."""
    return ALIASES.get(spec.strip(), spec.strip())


def parse_spec(spec: str) -> TeacherSpec:
    """The one parser of `--teacher` strings; a `ConfigError` lists every accepted form."""
    kind, sep, model = canonical_spec(spec).partition(":")
    if kind == "local" and not model:
        raise ConfigError("teacher.spec: 'local:' needs a model, e.g. local:smollm2 or local:/path/to/model")
    if not sep or kind not in (*PROVIDERS, "local") or not model:
        known = ", ".join([*ALIASES, *(f"{p}:MODEL" for p in PROVIDERS), "local:ID_OR_PATH"])
        raise ConfigError(f"--teacher {spec!r}: not a teacher spec; use one of {known}")
    return TeacherSpec(kind, model)


def is_api_spec(spec: str) -> bool:
    try:
        return parse_spec(spec).is_api
    except ConfigError:
        return False


# --- keys ----------------------------------------------------------------------------------
def key_env_names(provider: str) -> tuple[str, ...]:
    """The environment variables a client of `provider` may read its key from, in order.

    The only place that decides it. The vLLM prompt-logprobs scorer is an `openai-compatible`
    client. A provider not in the table may read nothing.
    """
    info = PROVIDERS.get(provider)
    return info.key_envs if info is not None else ()


def api_key(provider: str, env: Mapping[str, str] | None = None) -> str | None:
    """The key for `provider` from its own variables only (None when unset)."""
    env = os.environ if env is None else env
    for name in key_env_names(provider):
        if env.get(name):
            return env[name]
    return None


def base_url(provider: str, cfg_url: str | None, env: Mapping[str, str]) -> str | None:
    return cfg_url or next((env[v] for v in PROVIDERS[provider].base_url_envs if env.get(v)), None)


# --- construction ----------------------------------------------------------------------------
def retry_policy(cfg: "TeacherConfig") -> RetryPolicy:
    return RetryPolicy(max_attempts=cfg.max_attempts, deadline_s=cfg.deadline_s)


def build_api_teacher(cfg: "TeacherConfig", spec: str | None = None, *, env: Mapping[str, str] | None = None,
                      limits: LimitsRegistry | None = None, policy: RetryPolicy | None = None,
                      tokenizer: Any = None, http_client: "httpx.AsyncClient | None" = None) -> Teacher:
    """Build the API teacher for `spec` (default `cfg.spec`). Raises `TeacherAuthError` when the
    provider needs a key and none is set, `ConfigError` for a bad spec or missing base URL."""
    env = os.environ if env is None else env
    parsed = parse_spec(spec or cfg.spec)
    if not parsed.is_api:
        raise ConfigError(f"--teacher {parsed}: not an API teacher")
    provider, model = parsed.kind, parsed.model
    info = PROVIDERS[provider]
    key = api_key(provider, env)
    if info.needs_key and not key:
        raise TeacherAuthError(f"teacher {parsed}: no API key; set {' or '.join(info.key_envs)} (or choose another --teacher)",
                               provider=provider)
    url = base_url(provider, cfg.base_url, env)
    if provider == "openai-compatible" and not url:
        raise ConfigError("teacher openai-compatible: needs the server's URL; pass --teacher-base-url http://HOST:PORT/v1")
    caps = lookup(provider, model)
    continuation = None if cfg.continuation == "auto" else cfg.continuation
    if continuation is None and provider == "openai-compatible" and (cfg.template or tokenizer is not None):
        continuation = "raw"
    caps = with_overrides(caps, continuation=continuation, max_n=cfg.max_n)
    if caps.continuation in ("raw", "continue_final") and provider != "openai-compatible":
        raise ConfigError(f"--teacher-continuation {caps.continuation}: only openai-compatible servers support it")
    policy = policy or retry_policy(cfg)
    lim = (limits or default_registry()).get(provider, model, concurrency=cfg.concurrency,
                                             rpm=cfg.rpm or caps.default_rpm, tpm=cfg.tpm)
    kwargs: dict[str, Any] = dict(caps=caps, api_key=key, base_url=url, timeout_s=cfg.timeout_s,
                                  policy=policy, limits=lim, spec=str(parsed), http_client=http_client)
    if provider == "openai-compatible":
        if tokenizer is None and cfg.template and caps.continuation == "raw":
            from omniopd.models import load_tokenizer

            tokenizer = load_tokenizer(cfg.template)
        kwargs["tokenizer"] = tokenizer  # the client refuses raw continuation without one
    cls = getattr(importlib.import_module(info.module), info.cls)
    return cls(model, **kwargs)


def build_local_teacher(model_spec: str, spec: str | None = None) -> Teacher:
    """An in-process teacher from a model spec (hub id, directory, .gguf, or 'smollm2')."""
    from omniopd.models import load_causal_lm
    from providers.local import LocalTeacher

    model, tok = load_causal_lm(model_spec)
    return LocalTeacher(model, tok, spec=spec or f"local:{model_spec}")


def build_api_teacher_with_fallback(cfg: "TeacherConfig", spec: str | None, local_factory: Callable[[], Teacher],
                                    **kw: Any) -> Teacher:
    """The API teacher wrapped in `FallbackTeacher` (unless `cfg.no_fallback`): an auth error or
    outage during the run switches to the local teacher; a missing key starts the run on it
    only when `--fallback-teacher` was named (`cfg.fallback`), else it is a `TeacherAuthError`."""
    from omniopd.config import DEFAULT_FALLBACK_TEACHER

    if cfg.no_fallback:
        return build_api_teacher(cfg, spec, **kw)
    canon = str(parse_spec(spec or cfg.spec))
    fallback = cfg.fallback or DEFAULT_FALLBACK_TEACHER
    try:
        primary = build_api_teacher(cfg, spec, **kw)
    except TeacherAuthError as exc:
        if cfg.fallback is None:
            raise
        return FallbackTeacher(None, local_factory, spec=canon, fallback_spec=fallback, reason=str(exc))
    return FallbackTeacher(primary, local_factory, spec=canon, fallback_spec=fallback)


def build_teacher(cfg: "TeacherConfig", spec: str | None = None) -> Teacher:
    """Build the teacher named by `spec` (default `cfg.spec`): local, or API with fallback."""
    from omniopd.config import DEFAULT_FALLBACK_TEACHER

    parsed = parse_spec(spec or cfg.spec)
    if parsed.kind == "local":
        return build_local_teacher(parsed.model, str(parsed))
    name = cfg.fallback or DEFAULT_FALLBACK_TEACHER
    fallback = parse_spec(name)
    if fallback.kind != "local":
        raise ConfigError(f"--fallback-teacher {name!r}: must be a local:ID_OR_PATH teacher")
    return build_api_teacher_with_fallback(cfg, str(parsed), lambda: build_teacher(cfg, str(fallback)))


def build_prompt_logprobs_scorer(cfg: "TeacherConfig", *, run: Callable[[Any], Any],
                                 env: Mapping[str, str] | None = None) -> Any | None:
    """The vLLM prompt-logprobs scorer for an `openai-compatible` teacher with a base URL, else None.

    `run` drives a coroutine to completion on the process's event loop. Its key is the
    `openai-compatible` provider's (`OPENAI_COMPATIBLE_API_KEY`), never OpenAI's.
    """
    parsed = parse_spec(cfg.spec)
    if parsed.kind != "openai-compatible" or not cfg.base_url:
        return None
    from providers.vllm_logprobs import OpenAICompatPromptLogprobs

    return OpenAICompatPromptLogprobs(parsed.model, cfg.base_url, run=run, api_key=api_key(parsed.kind, env),
                                      timeout_s=cfg.timeout_s, policy=retry_policy(cfg), spec=str(parsed))
