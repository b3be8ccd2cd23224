"""What one learner step costs in memory, and the token budget that bounds it.

A step holds the model states — fp32 weights, gradients and AdamW's two moments (16 bytes per
trainable parameter; 4 per parameter of a frozen reference copy or an in-process teacher) — and,
per micro-batch, the backbone's activations kept for the backward, linear in the micro-batch's
padded tokens. The learner's head is sliced (`omniopd.head`): the vocabulary adds a fixed tile,
not a per-token cost. So the micro-batch budget (`--max-tokens-per-microbatch`) bounds a step
whatever the number of forks and appended rows (`omniopd.microbatch`).

Activation bytes per token and layer are modelled as 4 x (18 h + 4 i) (h hidden size, i MLP
width; fp32): measured on the packaged SmolLM2-135M (h 576, i 1536, 30 layers), one 2048-token
micro-batch raised the resident set by 4.1 GiB including gradients — the model predicts 3.9.
Gradient checkpointing keeps one hidden state per layer and recomputes the rest (~h per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# SmolLM2-135M keeps ~2 MB of activations a token: 1024 tokens add ~1.8 GiB to the ~3.3 GiB of
# model states of a full-weight run with a local teacher (bench/step_memory.py, README "memory")
CPU_MICROBATCH_TOKENS = 1024
MIN_MICROBATCH_TOKENS = 512
HEAD_TILE_BYTES = 4 * 64 * 2**20  # a few (slice, V) fp32 tiles of omniopd.head alive at once
GPU_ACTIVATION_SHARE = 0.5  # of the memory left after the model states, for one micro-batch's activations


def activation_bytes_per_token(model_config: Any, *, checkpointing: bool = False) -> int:
    """Bytes of activations one token keeps for the backward, over all layers (fp32)."""
    h = int(getattr(model_config, "hidden_size", 0) or getattr(model_config, "n_embd", 0) or 1024)
    i = int(getattr(model_config, "intermediate_size", 0) or 4 * h)
    layers = int(getattr(model_config, "num_hidden_layers", 0) or getattr(model_config, "n_layer", 0) or 12)
    per_layer = 4 * (2 * h if checkpointing else 18 * h + 4 * i)
    return layers * per_layer


@dataclass(frozen=True)
class StepMemory:
    """A step's estimated peak, in bytes, by part."""

    model_states: int
    activations: int
    frozen: int
    fixed: int

    @property
    def total(self) -> int:
        return self.model_states + self.activations + self.frozen + self.fixed


def model_state_bytes(trainable_params: int, total_params: int) -> int:
    """fp32 weights, gradients and AdamW's two moments of the trainable parameters; weights of the rest."""
    return 16 * trainable_params + 4 * (total_params - trainable_params)


def estimate_step_bytes(*, trainable_params: int, total_params: int, reference_params: int, teacher_params: int,
                        microbatch_tokens: int, act_bytes_per_token: int) -> StepMemory:
    """The estimated peak of one learner step (see the module docstring for the model).

    `reference_params`: a frozen reference copy (full-weight runs with the KL anchor; 0 under
    LoRA, where the reference is the adapter switched off). `teacher_params`: an in-process
    (local) teacher's weights, 0 for an API teacher.
    """
    return StepMemory(model_states=model_state_bytes(trainable_params, total_params), activations=microbatch_tokens * act_bytes_per_token,
                      frozen=4 * (reference_params + teacher_params), fixed=HEAD_TILE_BYTES)


def available_bytes(device: str = "cpu") -> int | None:
    """Memory this process may still use: the GPU's free memory, else the smaller of the kernel's
    MemAvailable and the cgroup's limit minus its usage; None when neither can be read."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail


def default_microbatch_tokens(device: str, *, model_states_bytes: int, act_bytes_per_token: int,
                              free_bytes: int | None) -> int:
    """The budget when `--max-tokens-per-microbatch` is unset: fixed on CPU (`CPU_MICROBATCH_TOKENS`);
    on a GPU, half of what its free memory leaves after the model states, in multiples of 256."""
    if not device.startswith("cuda") or free_bytes is None:
        return CPU_MICROBATCH_TOKENS
    room = max(0, free_bytes - model_states_bytes) * GPU_ACTIVATION_SHARE
    tokens = int(room // max(1, act_bytes_per_token)) // 256 * 256
    return max(MIN_MICROBATCH_TOKENS, tokens)


def too_big_message(est: StepMemory, avail: int, budget: int) -> str:
    """What a user reads before step 1 when the estimate exceeds the memory available."""
    gib = 2**30
    return (f"one learner step is estimated at {est.total / gib:.1f} GiB (model states {est.model_states / gib:.1f}, "
            f"frozen copies {est.frozen / gib:.1f}, activations of a {budget}-token micro-batch "
            f"{est.activations / gib:.1f}) but {avail / gib:.1f} GiB is available. To shrink it: "
            f"--max-tokens-per-microbatch {max(MIN_MICROBATCH_TOKENS, budget // 2)} (activations scale with it), "
            "--gradient-checkpointing (recompute activations), --lora-r 16 (no optimizer state for frozen weights, "
            "no reference copy), or --beta 0 (no reference copy). Fewer forks or rows do not change the peak: "
            "they only change the number of micro-batches.")



MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def return_freed_memory_to_the_os() -> bool:
    """Make glibc serve every allocation of 1 MiB or more with its own mmap (`mallopt`).

    By default glibc raises its mmap threshold each time a large block is freed (up to 32 MiB),
    after which a step's activation tensors come from the heap, where freed space fragments and
    is not returned: on SmolLM2 a second step's resident peak stood ~1.5 GiB above the first's
    for the same tensors. A fixed threshold returns each freed tensor to the kernel at once, so
    the peak is what the step holds. No effect (False) where libc is not glibc. Called once by
    `omniopd train` (a process-wide setting, never at import).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
