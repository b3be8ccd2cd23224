"""Fail fast: the checks `omniopd train` makes before any model loads or anything is written.

A run that would fail on its teacher spec, a missing API key or a `report_to` backend that is
not installed fails here, in well under a second, with a message that says what to do —
not after the student has loaded (tens of seconds) and `config.yaml` has been written. The
data (first rows parsed) and the run directory's rules are checked by the first steps of
`omniopd.train.run_train`, also before any model loads.

Nothing here imports torch, transformers or an SDK. `check_teacher` is the one function that
knows how a `--teacher` spec is parsed and which key it needs: it calls the spec parser and
alias table of `omniopd.teachers` (never a second parser).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Mapping

from omniopd.config import TrainConfig
from omniopd.errors import ConfigError, TeacherAuthError

# report_to name -> modules any one of which makes the backend importable (transformers'
# is_*_available checks); "all" and "none" need nothing
REPORT_BACKENDS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",), "neptune": ("neptune",), "trackio": ("trackio",), "clearml": ("clearml",),
    "codecarbon": ("codecarbon",), "dagshub": ("dagshub",), "flyte": ("flytekit",), "dvclive": ("dvclive",),
    "swanlab": ("swanlab",), "azure_ml": ("azureml",), "kubeflow": ("kubeflow",),
}


def did_you_mean(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """' (did you mean X?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def preflight(cfg: TrainConfig, *, teacher_given: bool = False, env: Mapping[str, str] | None = None) -> None:
    """Every check that needs no model: raises the first `OmniOPDError` found."""
    env = os.environ if env is None else env
    if not teacher_given and cfg.cache.replay is None:  # replay constructs no teacher
        check_teacher(cfg, env)
    check_report_to(cfg.output.report_to)


def _spec_candidates() -> list[str]:
    from omniopd.teachers import ALIASES, PROVIDERS
    from providers.capabilities import TABLE

    models = {f"{c.provider}:{c.pattern.rstrip('*')}" for c in TABLE if "*" not in c.pattern.rstrip("*")}
    return [*ALIASES, *sorted(models), *(f"{p}:MODEL" for p in PROVIDERS), "local:smollm2"]


def _spec_hint(spec: str) -> str:
    """A near miss of an alias, a known provider:model, or a bare model name of the table."""
    keys = {c: c for c in _spec_candidates()}
    keys.update({c.split(":", 1)[1]: c for c in list(keys) if ":" in c and not c.endswith(":MODEL")})
    close = difflib.get_close_matches(spec, list(keys), n=1, cutoff=0.6)
    return f" (did you mean {keys[close[0]]}?)" if close else ""


def check_teacher(cfg: TrainConfig, env: Mapping[str, str]) -> None:
    """The teacher spec parses, a local model resolves, and an API teacher has its key.

    A missing key is an error naming the variable, unless `--fallback-teacher` was named
    explicitly (then the run starts on that local teacher, and says so). Outages during a run
    fall back to the local teacher either way (`providers/fallback.py`).
    """
    from omniopd.teachers import PROVIDERS, api_key, key_env_names, parse_spec

    t = cfg.teacher
    spec = t.spec.strip()
    if t.fallback is not None:
        _check_local(t.fallback, "--fallback-teacher")
    if spec.startswith("local:"):
        _check_local(spec, "--teacher")
        return
    try:
        parsed = parse_spec(spec)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{_spec_hint(spec)}") from None
    provider, model = parsed.kind, parsed.model
    info = PROVIDERS[provider]
    if provider == "openai-compatible" and not t.base_url:
        raise ConfigError("teacher openai-compatible: needs the server's URL; pass --teacher-base-url http://HOST:PORT/v1")
    if info.needs_key and api_key(provider, env) is None:
        if not t.no_fallback and t.fallback is not None:
            return  # the user asked for the local teacher when the API cannot be used
        raise TeacherAuthError(
            f"teacher {spec} ({provider}:{model}) needs an API key: set {' or '.join(key_env_names(provider))} in the "
            "environment, choose another --teacher, or name --fallback-teacher local:MODEL to train on a local teacher "
            "instead", provider=provider)


def _check_local(spec: str, flag: str) -> None:
    from omniopd.models import resolve_model
    from omniopd.teachers import parse_spec

    try:
        parsed = parse_spec(spec)
    except ConfigError:
        parsed = None
    if parsed is None or parsed.kind != "local":
        raise ConfigError(f"{flag} {spec!r}: must be local:ID_OR_PATH (e.g. local:smollm2)")
    resolve_model(parsed.model)  # a missing path or packaged model fails here, naming the fix


def check_report_to(report_to: str) -> None:
    """Each `report_to` backend is a known name whose package is installed."""
    for name in (x.strip() for x in report_to.split(",")):
        if name in ("none", "all", ""):
            continue
        if name not in REPORT_BACKENDS:
            raise ConfigError(f"--report-to {name!r}: unknown backend{did_you_mean(name, tuple(REPORT_BACKENDS))}; "
                              f"known: none, all, {', '.join(REPORT_BACKENDS)}")
        if not any(importlib.util.find_spec(m) is not None for m in REPORT_BACKENDS[name]):
            raise ConfigError(f"--report-to {name}: the {name} package is not installed; "
                              f"`pip install {REPORT_BACKENDS[name][0]}`, or drop it from --report-to")
