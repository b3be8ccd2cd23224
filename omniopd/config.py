"""Typed configuration: one dataclass per concern, one-line help per knob, validated early.

Precedence is flag > config file > default (TRL's configs). Every knob is a dataclass field
made with `knob(...)`, which carries its help and its CLI flag; the CLI builds its parser from
these fields, so `omniopd train --help` documents every flag and there is one place to add a
knob. Unknown keys and out-of-range values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omniopd.errors import ConfigError


def knob(default: Any, help: str, *, flag: str | None = None, choices: tuple | None = None) -> Any:
    """A config field with its help text and (optionally) a flag name other than `--field-name`."""
    meta = {"help": help, "flag": flag, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _check_choice(value: Any, key: str, choices: tuple) -> None:
    _check(value in choices, key, f"must be one of {', '.join(map(str, choices))}; got {value!r}")


DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


@dataclass
class StudentConfig:
    model: str = knob("smollm2", "student: hub id, local directory, .gguf file, or 'smollm2' (packaged SmolLM2-135M-Instruct)", flag="--student")
    lora_r: int = knob(0, "LoRA rank; 0 trains all weights (the reference is then a frozen copy)")
    lora_alpha: int = knob(32, "LoRA alpha (used when --lora-r > 0)")
    generations: int = knob(4, "G: completions sampled per prompt")
    max_new_tokens: int = knob(256, "longest student completion, in tokens")
    temperature: float = knob(1.0, "student sampling temperature for rollouts (the paper: 1.0)")
    system_prompt: str | None = knob(None, "system message prepended to every prompt (none by default)")
    dtype: str = knob("auto", "student weights, loaded and saved: bf16, fp16 (GPU only), fp32 (no autocast), or auto (fp32 weights; bf16 autocast on a GPU that has it)", choices=DTYPE_CHOICES)
    use_vllm: bool = knob(False, "sample student rollouts with vLLM through TRL's use_vllm path (GPU; entropies by one teacher-forced forward)", flag="--use-vllm")
    vllm_mode: str = knob("colocate", "--use-vllm: colocate (vLLM inside the training process) or server (`trl vllm-serve`)", choices=("colocate", "server"), flag="--vllm-mode")
    vllm_server_base_url: str | None = knob(None, "--vllm-mode server: the `trl vllm-serve` URL (default http://localhost:8000)", flag="--vllm-server-url")

    def __post_init__(self) -> None:
        _check(bool(self.model), "student.model", "must not be empty")
        _check(self.lora_r >= 0, "student.lora_r", f"must be >= 0; got {self.lora_r}")
        _check(self.lora_alpha > 0, "student.lora_alpha", f"must be > 0; got {self.lora_alpha}")
        _check(self.generations >= 1, "student.generations", f"must be >= 1; got {self.generations}")
        _check(self.max_new_tokens >= 1, "student.max_new_tokens", f"must be >= 1; got {self.max_new_tokens}")
        _check(self.temperature > 0, "student.temperature", f"must be > 0; got {self.temperature}")
        _check_choice(self.dtype, "student.dtype", DTYPE_CHOICES)


# The local teacher an API teacher hands over to when the API stays down during a run. A
# missing key falls back only to a --fallback-teacher the user named (no silent self-distillation).
DEFAULT_FALLBACK_TEACHER = "local:smollm2"


@dataclass
class TeacherConfig:
    spec: str = knob("local:smollm2", "teacher: claude-haiku, anthropic:M, openai:M, gemini:M, openai-compatible:M, local:ID_OR_PATH", flag="--teacher")
    samples: int | None = knob(None, "N: teacher continuations per audited chunk; unset = 1 with --fork-imitation (the default signal: one continuation to the end of the answer per fork), else 10 (the paper)", flag="--teacher-samples")
    base_url: str | None = knob(None, "API base URL (required for openai-compatible:, overrides the SDK's env var otherwise)", flag="--teacher-base-url")
    temperature: float | None = knob(None, "teacher sampling temperature; unset = the provider's default", flag="--teacher-temperature")
    token_factor: float | None = knob(None, "teacher max tokens per continuation = ceil(factor * chunk tokens); unset = 4.0 with --fork-imitation (the teacher continues to the end of the answer), else 1.3", flag="--teacher-token-factor")
    fallback: str | None = knob(None, f"local teacher used when the API fails past its deadline (unset: {DEFAULT_FALLBACK_TEACHER}); naming it also lets a run with no API key start on it", flag="--fallback-teacher")
    no_fallback: bool = knob(False, "fail instead of falling back to the local teacher", flag="--no-fallback")
    max_usd: float | None = knob(None, "stop cleanly (checkpoint saved) once teacher spend reaches this many USD", flag="--max-teacher-usd")
    concurrency: int = knob(8, "requests in flight per (provider, model)", flag="--teacher-concurrency")
    rpm: float | None = knob(None, "requests per minute per (provider, model); unset = the table's default", flag="--teacher-rpm")
    tpm: float | None = knob(None, "tokens per minute per (provider, model); unset = unlimited", flag="--teacher-tpm")
    timeout_s: float = knob(60.0, "per-request timeout, seconds", flag="--teacher-timeout")
    deadline_s: float = knob(300.0, "give up retrying one request after this many seconds", flag="--teacher-deadline")
    max_attempts: int = knob(8, "attempts per request before giving up", flag="--teacher-max-attempts")
    continuation: str = knob("auto", "how the prefix is continued; auto = the capability table's choice (raw needs --teacher-template)", flag="--teacher-continuation", choices=("auto", "raw", "continue_final", "prefill", "instruct"))
    template: str | None = knob(None, "openai-compatible: tokenizer (dir, .gguf, 'smollm2') whose chat template the server's model uses; enables raw /v1/completions continuation", flag="--teacher-template")
    max_n: int | None = knob(None, "samples per request at most; unset = the capability table's value", flag="--teacher-max-n")

    def __post_init__(self) -> None:
        _check(bool(self.spec), "teacher.spec", "must not be empty")
        _check(self.samples is None or self.samples >= 1, "teacher.samples", f"must be >= 1; got {self.samples}")
        _check(self.temperature is None or self.temperature >= 0, "teacher.temperature", f"must be >= 0; got {self.temperature}")
        _check(self.token_factor is None or self.token_factor >= 1.0, "teacher.token_factor", f"must be >= 1; got {self.token_factor}")
        _check(self.max_usd is None or self.max_usd > 0, "teacher.max_usd", f"must be > 0; got {self.max_usd}")
        _check(self.concurrency >= 1, "teacher.concurrency", f"must be >= 1; got {self.concurrency}")
        _check(self.rpm is None or self.rpm > 0, "teacher.rpm", f"must be > 0; got {self.rpm}")
        _check(self.tpm is None or self.tpm > 0, "teacher.tpm", f"must be > 0; got {self.tpm}")
        _check(self.timeout_s > 0, "teacher.timeout_s", f"must be > 0; got {self.timeout_s}")
        _check(self.deadline_s > 0, "teacher.deadline_s", f"must be > 0; got {self.deadline_s}")
        _check(self.max_attempts >= 1, "teacher.max_attempts", f"must be >= 1; got {self.max_attempts}")
        _check_choice(self.continuation, "teacher.continuation", ("auto", "raw", "continue_final", "prefill", "instruct"))
        _check(self.max_n is None or self.max_n >= 1, "teacher.max_n", f"must be >= 1; got {self.max_n}")


@dataclass
class DataConfig:
    path: str = knob("demo", "prompts: a .jsonl/.json/.parquet/.csv file, a `save_to_disk` directory, a `datasets` name (with --data-config, --split), or 'demo' (the packaged set)", flag="--data")
    prompt_field: str = knob("question", "field holding the prompt: text, or a list of chat messages (TRL's conversational 'prompt'); GSM8K: question")
    answer_field: str | None = knob(None, "field holding the reference answer (kept for verifiers and eval)")
    split: str = knob("train", "split to read from a `save_to_disk` directory or a `datasets` name")
    config: str | None = knob(None, "`datasets` config name for --data NAME (GSM8K: main)", flag="--data-config")
    limit: int | None = knob(None, "use only the first N prompts", flag="--data-limit")
    max_row_bytes: int = knob(1_000_000, "longest row accepted (JSONL line bytes; prompt characters otherwise); a longer one is an error naming its line", flag="--data-max-row-bytes")
    eval_path: str | None = knob(None, "held-out problems for --eval-every (same formats and fields as --data; needs --answer-field)", flag="--eval-data")
    eval_split: str = knob("test", "split of --eval-data when it is a `save_to_disk` directory or a `datasets` name", flag="--eval-split")
    eval_limit: int = knob(200, "score at most the first N held-out problems at each evaluation", flag="--eval-limit")

    def __post_init__(self) -> None:
        _check(bool(self.path), "data.path", "must not be empty")
        _check(bool(self.prompt_field), "data.prompt_field", "must not be empty")
        _check(self.limit is None or self.limit >= 1, "data.limit", f"must be >= 1; got {self.limit}")
        _check(self.max_row_bytes >= 1, "data.max_row_bytes", f"must be >= 1; got {self.max_row_bytes}")
        _check(self.eval_limit >= 1, "data.eval_limit", f"must be >= 1; got {self.eval_limit}")


@dataclass
class SchedulerConfig:
    chunk_tokens: int = knob(50, "C: tokens per audited chunk (the paper: 50)")
    chunks_per_completion: int = knob(10, "M: audited chunks per completion at most (the paper: 10)")
    batch_budget: int | None = knob(None, "audited chunks per step across the batch at most (highest entropy first)")
    selection: str = knob("entropy", "where chunks start: entropy peaks (the paper), uniform spacing (ablation), or early (back to back from the answer's start, within its first 30 %)", choices=("entropy", "uniform", "early"))

    def __post_init__(self) -> None:
        _check(self.chunk_tokens >= 1, "scheduler.chunk_tokens", f"must be >= 1; got {self.chunk_tokens}")
        _check(self.chunks_per_completion >= 1, "scheduler.chunks_per_completion", f"must be >= 1; got {self.chunks_per_completion}")
        _check(self.batch_budget is None or self.batch_budget >= 1, "scheduler.batch_budget", f"must be >= 1; got {self.batch_budget}")
        _check_choice(self.selection, "scheduler.selection", ("entropy", "uniform", "early"))


SIMILARITY_CHOICES = ("auto", "embedding", "edit", "rouge1", "numbers", "token_f1")


@dataclass
class ScorerConfig:
    similarity: str = knob("auto", "phi: auto (numbers; embedding with --paper-loss), embedding cosine (packaged MiniLM), normalised char edit distance, ROUGE-1 F1, numbers (number F1 x edit), or token_f1 (student-token F1)", choices=SIMILARITY_CHOICES)
    embedder: str = knob("minilm", "sentence-transformers model for phi=embedding: path, hub id, or 'minilm' (packaged)")
    alpha: float = knob(1.0, "Dirichlet prior strength alpha in pi_hat = (k + alpha*pi_bar)/(N + alpha)")
    trim_slack: float = knob(0.2, "teacher samples are trimmed to the student chunk's characters * (1 + slack) before phi")

    def __post_init__(self) -> None:
        _check_choice(self.similarity, "scorer.similarity", SIMILARITY_CHOICES)
        _check(self.alpha >= 0, "scorer.alpha", f"must be >= 0; got {self.alpha}")
        _check(self.trim_slack >= 0, "scorer.trim_slack", f"must be >= 0; got {self.trim_slack}")


LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                 "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")


@dataclass
class LearnerConfig:
    beta: float = knob(0.1, "weight of the exact KL(pi_ref || pi_theta) anchor on unaudited tokens (the paper: 0.1)")
    learning_rate: float = knob(1e-5, "AdamW learning rate")
    prompts_per_step: int = knob(2, "prompts per optimizer step (each sampled G times)")
    updates_per_batch: int = knob(1, "optimizer steps on each batch of rollouts (TRL's num_iterations); >1 reuses rollouts")
    epsilon: float = knob(0.2, "PPO clip range, active only when rollouts are reused")
    max_grad_norm: float = knob(1.0, "gradient clipping norm")
    max_steps: int = knob(3, "optimizer steps to run", flag="--max-steps")
    seed: int = knob(0, "seed for sampling, data order and initialisation", flag="--seed")
    num_epochs: float | None = knob(None, "passes over the prompts; when set it replaces --max-steps", flag="--num-epochs")
    gradient_accumulation_steps: int = knob(1, "micro-batches per optimizer step: each step's prompts_per_step * generations completions are split into this many (TRL's steps_per_generation)")
    gradient_checkpointing: bool = knob(False, "recompute activations in the backward to save memory (TRL/transformers gradient_checkpointing)")
    max_tokens_per_microbatch: int | None = knob(None, "padded tokens per forward/backward micro-batch: a step's peak memory follows this, not the number of forks or appended rows; unset = 1024 on CPU, from the free memory on a GPU; 0 = the whole batch at once", flag="--max-tokens-per-microbatch")
    lr_scheduler: str = knob("constant", "learning-rate schedule (transformers' lr_scheduler_type)", choices=LR_SCHEDULERS)
    warmup_ratio: float = knob(0.0, "share of the run spent warming the learning rate up from 0, in [0, 1)")
    async_steps: int = knob(0, "rollouts generated this many steps ahead while the teacher answers (0: on-policy order; "
                               "1: one step stale, corrected by the PPO ratio against the recorded behaviour log-probs)",
                            flag="--async-steps")

    def __post_init__(self) -> None:
        _check(self.num_epochs is None or self.num_epochs > 0, "learner.num_epochs", f"must be > 0; got {self.num_epochs}")
        _check(self.max_tokens_per_microbatch is None or self.max_tokens_per_microbatch == 0
               or self.max_tokens_per_microbatch >= 16, "learner.max_tokens_per_microbatch",
               f"must be 0 (no limit) or >= 16 tokens; got {self.max_tokens_per_microbatch}")
        _check(self.gradient_accumulation_steps >= 1, "learner.gradient_accumulation_steps", f"must be >= 1; got {self.gradient_accumulation_steps}")
        _check_choice(self.lr_scheduler, "learner.lr_scheduler", LR_SCHEDULERS)
        _check(0 <= self.warmup_ratio < 1, "learner.warmup_ratio", f"must be in [0, 1); got {self.warmup_ratio}")
        _check(self.beta >= 0, "learner.beta", f"must be >= 0; got {self.beta}")
        _check(0 <= self.async_steps <= 4, "learner.async_steps", f"must be in 0..4 (staleness is bounded); got {self.async_steps}")
        _check(self.learning_rate > 0, "learner.learning_rate", f"must be > 0; got {self.learning_rate}")
        _check(self.prompts_per_step >= 1, "learner.prompts_per_step", f"must be >= 1; got {self.prompts_per_step}")
        _check(self.updates_per_batch >= 1, "learner.updates_per_batch", f"must be >= 1; got {self.updates_per_batch}")
        _check(0 < self.epsilon < 1, "learner.epsilon", f"must be in (0, 1); got {self.epsilon}")
        _check(self.max_grad_norm > 0, "learner.max_grad_norm", f"must be > 0; got {self.max_grad_norm}")
        _check(self.max_steps >= 1, "learner.max_steps", f"must be >= 1; got {self.max_steps}")


METHOD_CHOICES = ("auto", "omniopd", "sft", "opd", "sg-opd", "tropd")
# what `--method auto` (the default) resolves to: the recipe the lab measured best per teacher dollar
# (bench/lab/RESULTS.md); --paper-loss resolves it to the paper's method instead
DEFAULT_METHOD = "sft"
DRIFT_GATE_CHOICES = ("off", "block", "newline")
PIHAT_BASELINE_CHOICES = ("auto", "none", "group", "loo")


@dataclass
class MethodConfig:
    """Which distillation method trains the student, and the knobs of each (README, section Methods)."""

    name: str = knob("auto", "method: sft or omniopd (any teacher); opd, sg-opd, tropd (white-box teacher sharing the student's tokenizer); auto = sft, the most accuracy per teacher dollar the lab measured (omniopd with --paper-loss)", flag="--method", choices=METHOD_CHOICES)
    teacher_solutions: int = knob(1, "sft: whole teacher solutions bought per prompt and step", flag="--teacher-solutions")
    sft_only_failures: bool = knob(False, "sft: sample the student first and buy only for prompts none of whose G samples the verifier passes; its correct samples are free targets (needs --answer-field)", flag="--sft-only-failures")
    sft_negatives: float = knob(0.0, "sft: weight w of the student's verifier-wrong samples as negatives (advantage -w per token) beside the teacher's cross-entropy; 0 = off (needs --answer-field)", flag="--sft-negatives")
    sft_repair: bool = knob(False, "sft: for a prompt none of whose G samples the verifier passes, ask the teacher to rewrite only the first wrong line of one wrong sample (first-error minimal repair) and train on the correction after the student's own lines before it; a repair that fails to parse buys a whole solution (needs --answer-field)", flag="--sft-repair")
    drift_gate: str = knob("off", "blockwise policy-drift gate on the per-token loss: off, block (fixed blocks), newline (lines)", choices=DRIFT_GATE_CHOICES)
    gate_block_tokens: int = knob(64, "tokens per block of the drift gate (the paper: 64)")
    gate_tau: float = knob(1.0, "drift gate temperature tau in g = exp(-tau * |mean drift|) (the paper: 1)")
    verifier_gate: bool = knob(False, "omniopd: scale chunk weights by the verifier (x correct-scale if the answer is right, x wrong-scale if wrong)")
    verifier: str = knob("math", "verifier for sg-opd and --verifier-gate: math (final answer vs --answer-field, via math-verify)", choices=("math",))
    verifier_correct_scale: float = knob(1.8, "--verifier-gate: chunk-weight factor on completions verified correct (extrapolate)")
    verifier_wrong_scale: float = knob(0.5, "--verifier-gate: chunk-weight factor on completions verified wrong (interpolate)")
    sg_agree: float = knob(1.8, "sg-opd: lambda where the teacher signal's sign agrees with the verifier direction")
    sg_disagree: float = knob(1.0, "sg-opd: lambda where it disagrees")
    sg_rho0: float = knob(0.5, "sg-opd: initial share of each prompt's completions replaced by verified teacher completions")
    sg_phase_fraction: float = knob(0.1, "sg-opd: teacher-sampling phase length P as a fraction of --max-steps (0 disables)")
    tropd_membership: str = knob("bernoulli", "tropd: trusted ~ Bernoulli(p) or p >= --tropd-threshold", choices=("bernoulli", "threshold"))
    tropd_threshold: float = knob(0.5, "tropd: trust threshold for --tropd-membership threshold")
    tropd_outliers: str = knob("forward_kl", "tropd: outlier tokens get forward KL over the teacher's top-k, are masked, or have their signal clipped", choices=("forward_kl", "mask", "clip"))
    tropd_clip: float = knob(2.0, "tropd: with --tropd-outliers clip, outlier advantages are max(signal, -clip)")
    tropd_top_k: int = knob(64, "tropd: teacher top-k tokens in the outlier forward KL (the paper: 64)")
    tropd_guidance_share: float = knob(0.5, "tropd: initial share of a teacher completion given as prefix (cosine to 0; 0 disables guidance)")
    tropd_guidance_weight: float = knob(1e-3, "tropd: initial imitation weight on the teacher prefix (cosine to 0)")
    paper_loss: bool = knob(False, "the paper's method and loss: --method omniopd (unless another is named) and unset signal knobs take the paper's values (no pi_hat baseline, no fork imitation, phi embedding, N 10, 1.3 C-token continuations); README, Methods", flag="--paper-loss")
    pihat_baseline: str = knob("auto", "omniopd: chunk advantage; auto = loo (none with --paper-loss); pi_hat (none, the paper), minus the mean pi_hat of the prompt's G completions (group), or of its other completions (loo)", flag="--pihat-baseline", choices=PIHAT_BASELINE_CHOICES)
    fork_imitation: float | None = knob(None, "omniopd: weight w of cross-entropy on the teacher's own continuations at the student's forks (w/N_eff per sample token; 0 = off); unset = 2 (0 with --paper-loss)", flag="--fork-imitation")
    student_drafts: int = knob(0, "omniopd: K alternative student chunks per fork, ranked by phi against the teacher samples, trained with group-relative advantages (0 = off)", flag="--student-drafts")
    pihat_weight: float = knob(1.0, "omniopd: weight of the pi_hat chunk term (after its baseline); 1 = the paper's, 0 = fork imitation or drafts alone (pure black-box DAgger)", flag="--pihat-weight")

    def __post_init__(self) -> None:
        if self.name == "auto":  # the measured default, or the paper's method one flag away
            self.name = "omniopd" if self.paper_loss else DEFAULT_METHOD
        # unset signal knobs follow --paper-loss (the paper) or the default signal; explicit values win
        if self.pihat_baseline == "auto":
            self.pihat_baseline = "none" if self.paper_loss else "loo"
        if self.fork_imitation is None:
            self.fork_imitation = 0.0 if self.paper_loss else 2.0
        _check_choice(self.name, "method.name", METHOD_CHOICES)
        _check_choice(self.drift_gate, "method.drift_gate", DRIFT_GATE_CHOICES)
        _check(self.teacher_solutions >= 1, "method.teacher_solutions", f"must be >= 1; got {self.teacher_solutions}")
        _check(self.sft_negatives >= 0, "method.sft_negatives", f"must be >= 0; got {self.sft_negatives}")
        _check(self.name == "sft" or not (self.sft_only_failures or self.sft_negatives or self.sft_repair), "method.sft_*",
               f"--sft-only-failures, --sft-negatives and --sft-repair apply to --method sft; got --method {self.name}")
        _check(self.name != "sft" or self.drift_gate == "off", "method.drift_gate",
               "--method sft trains on whole solutions, not on drifting rollouts: drop --drift-gate")
        _check(self.gate_block_tokens >= 1, "method.gate_block_tokens", f"must be >= 1; got {self.gate_block_tokens}")
        _check(self.gate_tau >= 0, "method.gate_tau", f"must be >= 0; got {self.gate_tau}")
        _check(not self.verifier_gate or self.name == "omniopd", "method.verifier_gate",
               f"applies to --method omniopd only (sg-opd has its own sign gate); got --method {self.name}")
        _check_choice(self.verifier, "method.verifier", ("math",))
        _check(self.verifier_correct_scale >= 0 and self.verifier_wrong_scale >= 0, "method.verifier_*_scale", "must be >= 0")
        _check(self.sg_agree >= 0 and self.sg_disagree >= 0, "method.sg_agree/sg_disagree", "must be >= 0")
        _check(0 <= self.sg_rho0 <= 1, "method.sg_rho0", f"must be in [0, 1]; got {self.sg_rho0}")
        _check(0 <= self.sg_phase_fraction <= 1, "method.sg_phase_fraction", f"must be in [0, 1]; got {self.sg_phase_fraction}")
        _check_choice(self.tropd_membership, "method.tropd_membership", ("bernoulli", "threshold"))
        _check(0 < self.tropd_threshold <= 1, "method.tropd_threshold", f"must be in (0, 1]; got {self.tropd_threshold}")
        _check_choice(self.tropd_outliers, "method.tropd_outliers", ("forward_kl", "mask", "clip"))
        _check(self.tropd_clip > 0, "method.tropd_clip", f"must be > 0; got {self.tropd_clip}")
        _check(self.tropd_top_k >= 1, "method.tropd_top_k", f"must be >= 1; got {self.tropd_top_k}")
        _check(0 <= self.tropd_guidance_share < 1, "method.tropd_guidance_share", f"must be in [0, 1); got {self.tropd_guidance_share}")
        _check(self.tropd_guidance_weight >= 0, "method.tropd_guidance_weight", f"must be >= 0; got {self.tropd_guidance_weight}")
        _check_choice(self.pihat_baseline, "method.pihat_baseline", PIHAT_BASELINE_CHOICES)
        _check(self.fork_imitation >= 0, "method.fork_imitation", f"must be >= 0; got {self.fork_imitation}")
        _check(self.student_drafts >= 0, "method.student_drafts", f"must be >= 0; got {self.student_drafts}")
        _check(self.pihat_weight >= 0, "method.pihat_weight", f"must be >= 0; got {self.pihat_weight}")
        _check(self.pihat_weight > 0 or self.fork_imitation > 0 or self.student_drafts > 0, "method.pihat_weight",
               "0 leaves OmniOPD nothing to learn from: set --fork-imitation or --student-drafts, or a weight > 0")
        # the black-box signals reshape OmniOPD's chunk signal; white-box methods ignore them (as they ignore --beta)


@dataclass
class OutputConfig:
    dir: str = knob("runs/omniopd", "run directory: config.yaml, metrics.jsonl, checkpoints, final model", flag="--output")
    save_steps: int = knob(1, "save a resumable checkpoint every N steps (and at the last); 0 = none, final/ only")
    save_total_limit: int | None = knob(2, "keep at most N checkpoints (unset keeps all)")
    report_to: str = knob("none", "TRL/transformers report_to: none, tensorboard, wandb, ... (comma-separated)")
    resume: bool = knob(False, "resume from the newest checkpoint in the run directory", flag="--resume")
    run_name: str | None = knob(None, "run name shown by report_to backends (wandb, tensorboard, ...)")
    logging_dir: str | None = knob(None, "tensorboard log directory (transformers' TENSORBOARD_LOGGING_DIR); unset = under the run directory")
    push_to_hub: bool = knob(False, "push checkpoints and the final model to the Hugging Face Hub (needs a hub and a token)")
    hub_model_id: str | None = knob(None, "repository for --push-to-hub (user/name); unset = the run directory's name")
    eval_every: int = knob(0, "score the student on --eval-data before training, every N steps and at the last step; heldout.jsonl and the report plot accuracy against teacher dollars (0 = off)", flag="--eval-every")
    log_completions: bool = knob(False, "log each step's completion and fork tables (TRL's log_completions: completions/*.parquet, wandb, trackio; tensorboard text)", flag="--log-completions")

    def __post_init__(self) -> None:
        _check(bool(self.dir), "output.dir", "must not be empty")
        _check(self.hub_model_id is None or self.push_to_hub, "output.hub_model_id", "only applies with --push-to-hub")
        _check(self.save_steps >= 0, "output.save_steps", f"must be >= 0; got {self.save_steps}")
        _check(self.eval_every >= 0, "output.eval_every", f"must be >= 0; got {self.eval_every}")
        _check(self.save_total_limit is None or self.save_total_limit >= 1, "output.save_total_limit", f"must be >= 1; got {self.save_total_limit}")


@dataclass
class CacheConfig:
    path: str | None = knob(None, "teacher-sample cache file (SQLite); unset = the user-level teacher.sqlite in $OMNIOPD_CACHE_DIR, else $OMNIOPD_HOME, else $XDG_CACHE_HOME/omniopd, else ~/.cache/omniopd", flag="--cache")
    mode: str = knob("read-write", "read-write: serve stored samples and store new ones; read-only: serve, never write; off: no cache", flag="--cache-mode", choices=("read-write", "read-only", "off"))
    replay: str | None = knob(None, "retrain offline from a recorded run (its directory or episodes.sqlite): no teacher is constructed, no network", flag="--replay")
    strict_replay: bool = knob(False, "with --replay, fail on a fork whose teacher samples were not recorded (default: skip that fork and report it)", flag="--strict-replay")
    no_episodes: bool = knob(False, "do not record episodes (rollouts, forks, sample ids, weights) in the run directory", flag="--no-episodes")

    def __post_init__(self) -> None:
        _check_choice(self.mode, "cache.mode", ("read-write", "read-only", "off"))
        _check(self.path is None or bool(self.path.strip()), "cache.path", "must not be empty (leave it unset for the user-level cache)")
        _check(self.replay is None or bool(self.replay.strip()), "cache.replay", "must not be empty")
        _check(not self.strict_replay or self.replay is not None, "cache.strict_replay", "only applies with --replay RUN_DIR")


@dataclass
class TrainConfig:
    """Everything `omniopd train` needs; the YAML file has one mapping per section."""

    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    trl: dict[str, Any] = field(default_factory=dict)  # extra trl.GRPOConfig fields (see `check_trl_section`)

    def __post_init__(self) -> None:
        _check(not self.output.eval_every or (self.data.eval_path and self.data.answer_field), "output.eval_every",
               "--eval-every needs held-out problems with answers: set --eval-data FILE and --answer-field")
        _check(not self.method.sft_repair or self.data.answer_field, "method.sft_repair",
               "--sft-repair repairs the student's verifier-wrong answers: set --answer-field (GSM8K: answer)")
        # "auto" knobs take their value from the signal (README, Methods: defaults follow the lab's measurement)
        if self.scorer.similarity == "auto":
            self.scorer = dataclasses.replace(self.scorer, similarity="embedding" if self.method.paper_loss else "numbers")
        imitating = self.method.name == "omniopd" and self.method.fork_imitation > 0
        if self.teacher.token_factor is None:
            self.teacher = dataclasses.replace(self.teacher, token_factor=4.0 if imitating else 1.3)
        if self.teacher.samples is None:
            self.teacher = dataclasses.replace(self.teacher, samples=1 if imitating else 10)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


TRL_SECTION = "trl"
# GRPOConfig fields omniopd sets from its own knobs (or must hold for the learner to be correct)
TRL_MANAGED = {
    "output_dir": "output.dir", "per_device_train_batch_size": "learner.prompts_per_step", "num_generations": "student.generations",
    "steps_per_generation": "learner.gradient_accumulation_steps", "gradient_accumulation_steps": "learner.gradient_accumulation_steps",
    "num_iterations": "learner.updates_per_batch", "max_steps": "learner.max_steps", "num_train_epochs": "learner.num_epochs",
    "learning_rate": "learner.learning_rate", "lr_scheduler_type": "learner.lr_scheduler", "warmup_steps": "learner.warmup_ratio",
    "max_grad_norm": "learner.max_grad_norm", "epsilon": "learner.epsilon", "beta": "learner.beta (the exact KL anchor; TRL's must stay 0)",
    "loss_type": "omniopd's loss (omniopd/loss.py)", "temperature": "student.temperature",
    "max_completion_length": "student.max_new_tokens", "save_steps": "output.save_steps", "save_total_limit": "output.save_total_limit",
    "report_to": "output.report_to", "seed": "learner.seed", "data_seed": "learner.seed", "bf16": "student.dtype", "fp16": "student.dtype",
    "gradient_checkpointing": "learner.gradient_checkpointing", "run_name": "output.run_name", "push_to_hub": "output.push_to_hub",
    "hub_model_id": "output.hub_model_id", "remove_unused_columns": "omniopd (must be false)", "use_cpu": "omniopd (from the machine)",
}


# GRPOConfig fields that act in code omniopd replaces (TRL's loss, TRL's generation, reward
# functions): accepting them would silently do nothing
TRL_UNUSED_PREFIXES = ("vllm_", "vespo_", "sapo_", "entropy_coef", "ref_model_")
TRL_UNUSED = {
    "cast_lm_head_to_fp32", "delta", "entropy_target", "use_adaptive_entropy", "importance_sampling_level",
    "off_policy_mask_threshold", "top_entropy_quantile", "use_bias_correction_kl", "scale_rewards", "reward_weights",
    "multi_objective_aggregation", "mask_truncated_completions", "sync_ref_model", "top_k", "top_p", "min_p",
    "repetition_penalty", "generation_kwargs", "cache_implementation", "use_vllm", "use_transformers_paged",
    "use_transformers_continuous_batching", "transformers_continuous_batching_config", "generation_batch_size",
    "max_tool_calling_iterations", "chat_template_kwargs", "num_generations_eval",
}


def check_trl_section(values: Any) -> dict[str, Any]:
    """The YAML `trl:` mapping: extra `trl.GRPOConfig` fields passed through unchanged.

    Unknown names fail with their dotted key (`trl.<name>`); fields omniopd sets itself name the
    omniopd knob to use instead. Values are checked when the GRPOConfig is built (train start).
    """
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError("trl: must be a mapping of trl.GRPOConfig fields to values")
    if not values:
        return {}
    from trl import GRPOConfig

    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    for key in values:
        if key in TRL_MANAGED:
            raise ConfigError(f"trl.{key}: set by omniopd; use {TRL_MANAGED[key]} instead")
        if key in TRL_UNUSED or key.startswith(TRL_UNUSED_PREFIXES):
            raise ConfigError(f"trl.{key}: acts in TRL's own loss, generation or rewards, which omniopd replaces "
                              "(omniopd/loss.py, omniopd/rollouts.py); it would have no effect")
        if key not in known:
            raise ConfigError(f"trl.{key}: not a field of trl.GRPOConfig (see `python -c \"from trl import GRPOConfig; help(GRPOConfig)\"`)")
    return dict(values)


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig) if f.name != TRL_SECTION}


SECTIONS: dict[str, type] = _section_types()


def field_base_type(tp: Any) -> tuple[type, bool]:
    """(scalar type, optional?) for a knob's annotation: `float | None` -> (float, True)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    base, optional = field_base_type(tp)
    if value is None:
        _check(optional, key, "must not be null")
        return None
    if base is bool:
        _check(isinstance(value, bool), key, f"must be true or false; got {value!r}")
        return value
    if base is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer; got {value!r}")
        return value
    if base is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number; got {value!r}")
        return float(value)
    if base is str:
        _check(isinstance(value, str), key, f"must be a string; got {value!r}")
        return value
    return value


def build_config(file_values: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Merge defaults < file values (nested mapping) < overrides (`section.field` -> value).

    Unknown sections or keys fail with the key's dotted name; values are type-checked, then
    each section's `__post_init__` checks ranges.
    """
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    file_values = file_values or {}
    if not isinstance(file_values, dict):
        raise ConfigError("config file: the top level must be a mapping of sections (student:, teacher:, ...)")
    trl_values = check_trl_section(file_values.get(TRL_SECTION))
    for section, values in file_values.items():
        if section == TRL_SECTION:
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown config section; known: {', '.join(SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of keys to values")
        merged[section].update(values)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"{dotted}: unknown config section")
        merged[section][key] = value
    sections = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in merged[section].items():
            if key not in known:
                raise ConfigError(f"{section}.{key}: unknown key; known keys of {section}: {', '.join(sorted(known))}")
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
        sections[section] = cls(**kwargs)
    return TrainConfig(**sections, trl=trl_values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})") from exc
    return data


COLLECT_WHAT = ("solutions", "forks")


@dataclass
class CollectConfig:
    """`omniopd collect`'s own knobs (the teacher, data, student and cache sections are `train`'s)."""

    what: str = knob("solutions", "what to buy: solutions (--teacher-solutions whole teacher answers per prompt, as --method sft buys them: same cache keys); forks (the --student's rollouts, its fork points and the teacher's continuations there, for `omniopd train --replay COLLECT_DIR/forks`)", choices=COLLECT_WHAT)
    batch: bool = knob(False, "buy through the provider's batch API at about half price (answers within 24 h; rerun to resume); live requests otherwise", flag="--batch")
    live_fallback: bool = knob(False, "--batch: buy items that errored or expired in a batch live, instead of in a new batch", flag="--live-fallback")
    dir: str = knob("runs/collect", "collect directory: the batch journal (batches.sqlite) and the spend ledger (spend.sqlite); rerun with the same one to resume", flag="--collect-dir")
    batch_items: int | None = knob(None, "requests per batch at most; unset = the provider's limit", flag="--batch-items")
    poll_s: float = knob(60.0, "seconds between status polls of open batches", flag="--poll-seconds")
    only_failures: bool = knob(False, "solutions: sample the --student first (--generations answers per prompt) and buy only for prompts where none is correct (math verifier vs --answer-field)", flag="--only-failures")
    retries: int = knob(1, "--batch: rounds of new batches for items that errored, expired or were canceled", flag="--batch-retries")
    max_wait_s: float | None = knob(None, "stop polling after this many seconds (the batches keep running; rerun to collect them); unset = wait until they end", flag="--max-wait")
    dry_run: bool = knob(False, "print what would be bought and its estimated cost, live and batched; buy nothing", flag="--dry-run")
    cancel: bool = knob(False, "cancel the open batches of --collect-dir, store what they finished, and report what they cost", flag="--cancel")

    def __post_init__(self) -> None:
        _check_choice(self.what, "collect.what", COLLECT_WHAT)
        _check(bool(self.dir), "collect.dir", "must not be empty")
        _check(self.batch_items is None or self.batch_items >= 1, "collect.batch_items", f"must be >= 1; got {self.batch_items}")
        _check(self.poll_s > 0, "collect.poll_s", f"must be > 0; got {self.poll_s}")
        _check(self.retries >= 0, "collect.retries", f"must be >= 0; got {self.retries}")
        _check(self.max_wait_s is None or self.max_wait_s >= 0, "collect.max_wait_s", f"must be >= 0; got {self.max_wait_s}")
        _check(not self.live_fallback or self.batch, "collect.live_fallback", "only applies with --batch")
        _check(not self.cancel or self.batch, "collect.cancel", "only applies with --batch")
        _check(not self.only_failures or self.what == "solutions", "collect.only_failures", "only applies with --what solutions")


def build_collect_config(values: dict[str, Any]) -> CollectConfig:
    """A `CollectConfig` from a mapping (the `collect:` section of a file, then `collect.*` flags)."""
    hints = typing.get_type_hints(CollectConfig)
    known = {f.name for f in dataclasses.fields(CollectConfig)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"collect.{key}: unknown key; known keys of collect: {', '.join(sorted(known))}")
        kwargs[key] = _coerce(value, hints[key], f"collect.{key}")
    return CollectConfig(**kwargs)
