"""The OmniOPD learner: a `trl.GRPOTrainer` subclass at its two documented hooks (DESIGN §1.5).

    L = - sum_chunks pihat_c * sum_{t in c} log pi_theta(y_t)  +  beta * sum_{t unaudited} KL(pi_ref || pi_theta)(t)

- `_generate_and_score_completions`: the student's own rollouts (with entropies), audited by
  the `Pipeline`; returns TRL's batch dict with per-token advantages of shape (B, T): pihat
  on audited tokens, 0 elsewhere. TRL's policy term then gives exactly -pihat * grad log pi
  on audited tokens (its ratio is 1 on the first pass; PPO clipping only acts when rollouts
  are reused, `updates_per_batch > 1`).
- `_compute_loss`: TRL's loss with its own k3 `beta` set to 0, plus the exact full-vocabulary
  KL(pi_ref || pi_theta) on unaudited completion tokens. The policy logits come from the same
  forward TRL's loss uses (`_get_per_token_logps_and_entropies` is overridden to keep them),
  so the anchor costs one extra no-grad forward of the reference, not a second policy pass.
  pi_ref is the base student: the adapter disabled under LoRA, else a frozen copy.

Normalisation (the paper writes a plain sum): both terms are summed over tokens and divided by
the number of completion tokens in the batch (TRL's `loss_type="dapo"` normaliser), so their
ratio is the paper's and the scale does not depend on completion length.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from omniopd.methods.drift_gate import DriftGate
from omniopd.methods.signals import MethodSignals, ScoredBatch
from omniopd.pipeline import Pipeline
from omniopd.rollouts import entropy_B, generate_rollouts


def chunk_weights_reward(prompts, completions, **kwargs):
    """Registered with TRL as the reward source; OmniOPD's weights are per token, not per completion.

    GRPOTrainer requires a reward function, but `OmniOPDTrainer` replaces the step that calls
    reward functions: the chunk weights come from `Pipeline.audit`. Reaching this is a bug.
    """
    raise RuntimeError("OmniOPD computes per-token chunk weights in _generate_and_score_completions; "
                       "the TRL reward path must not run")


def exact_kl_B_T(ref_logp_B_T_V: torch.Tensor, logp_B_T_V: torch.Tensor) -> torch.Tensor:
    """KL(pi_ref || pi_theta) per position, exact over the vocabulary."""
    p_ref = ref_logp_B_T_V.exp()
    return (p_ref * (ref_logp_B_T_V - logp_B_T_V)).sum(-1)


class OmniOPDTrainer(GRPOTrainer):
    """See the module docstring. `pipeline` audits rollouts; `beta` weighs the KL anchor."""

    def __init__(self, *args, pipeline: Pipeline | None = None, kl_beta: float = 0.1, max_new_tokens: int = 256,
                 ref_model: torch.nn.Module | None = None, progress: bool = False, replay=None,
                 method: MethodSignals | None = None, drift_gate: DriftGate | None = None, **kwargs):
        kwargs.setdefault("reward_funcs", chunk_weights_reward)
        model = kwargs.get("model", args[0] if args else None)
        if ref_model is None and kwargs.get("peft_config") is None and kl_beta > 0:
            # Copy before TRL patches `forward` with its fused LM head: the patch closes over the
            # original module's forward, so a copy made afterwards would run the policy's weights.
            ref_model = copy.deepcopy(model)
        super().__init__(*args, **kwargs)
        if self.beta != 0.0:
            raise ValueError("OmniOPDTrainer needs GRPOConfig(beta=0.0): the exact KL anchor replaces TRL's k3 term")
        if pipeline is None and method is None:
            raise ValueError("OmniOPDTrainer needs a pipeline (OmniOPD) or method signals (README, section Methods)")
        self.pipeline = pipeline
        self.replay = replay  # omniopd.run_cache.ReplayRollouts: recorded rollouts instead of sampling
        self.method = method
        self.kl_beta = kl_beta
        self.drift_gate = drift_gate if drift_gate is not None and drift_gate.enabled else None
        self._loss_inputs: dict | None = None
        self._last_gates: torch.Tensor | None = None
        if self.drift_gate is not None:
            # TRL multiplies `get_off_policy_mask(...)` into its per-token policy loss whenever this
            # is not None; the drift gate rides on that hook (see `get_off_policy_mask` below).
            self.off_policy_mask_threshold = 0.0
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self._keep_logits = False
        self._kept_logp: torch.Tensor | None = None
        self._uses_peft = hasattr(self.model, "disable_adapter")
        if ref_model is not None:
            ref_model.requires_grad_(False).eval().to(self.accelerator.device)
        self.omni_ref_model = ref_model

    # -- rollouts and audit -------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        prompts = [x["prompt"] for x in inputs]
        t0 = time.perf_counter()
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            if self.replay is not None:  # offline replay: the recorded rollouts, with their behaviour log-probs
                rollouts = self.replay.rollouts(self.state.global_step // self.num_iterations)
            else:
                rollouts = generate_rollouts(unwrapped, self.processing_class, prompts,
                                             max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                             progress=self.progress)
            t1 = time.perf_counter()
            audit = self._score_rollouts(rollouts, inputs, unwrapped)
        rollouts = audit.rollouts
        t2 = time.perf_counter()
        device = self.accelerator.device
        completion_mask = rollouts.completion_mask.to(device)
        n_tokens = completion_mask.sum()
        num_items = self.accelerator.gather(n_tokens).sum()
        out = {
            "prompt_ids": rollouts.prompt_ids.to(device),
            "prompt_mask": rollouts.prompt_mask.to(device),
            "completion_ids": rollouts.completion_ids.to(device),
            "completion_mask": completion_mask,
            "advantages": audit.advantages_B_T.to(device),
            "audit_mask": audit.audit_mask_B_T.to(device),
            "behaviour_logps": rollouts.logprobs_B_T.to(device),
            "num_items_in_batch": num_items,
        }
        out.update({k: v.to(device) for k, v in audit.extra.items()})
        if self.num_iterations > 1:
            # the behaviour policy's log-probs, recorded at sampling time: PPO's pi_old
            out["old_per_token_logps"] = out["behaviour_logps"]
        m = self._metrics[mode]
        for name, value in audit.metrics.items():
            m[f"omniopd/{name}"].append(value)
        m["omniopd/rollout_seconds"].append(t1 - t0)
        m["omniopd/audit_seconds"].append(t2 - t1)
        m["completions/mean_length"].append(float(n_tokens) / max(1, completion_mask.size(0)))
        return out

    def _score_rollouts(self, rollouts, inputs: list[dict[str, Any]], student) -> ScoredBatch:
        """Per-token advantages for this batch: the OmniOPD audit, or the configured method's signals."""
        if self.method is not None:
            golds = [x.get("answer") for x in inputs]
            return self.method.score(rollouts, golds, self.state.global_step, student)
        audit = self.pipeline.audit(rollouts, step=self.state.global_step)
        return ScoredBatch(rollouts, audit.advantages_B_T, audit.audit_mask_B_T, metrics=audit.metrics)

    # -- loss -----------------------------------------------------------------------------------
    def get_off_policy_mask(self, advantages, per_token_logps, sampling_per_token_logps, mask, off_policy_threshold):
        """TRL's per-token loss factor hook, used for the blockwise policy-drift gate.

        Gates compare the current policy's log-probs (this forward) with the behaviour policy's,
        recorded at sampling (or in the replayed episode); detached, mean 1 over valid tokens.
        """
        if self.drift_gate is None:
            return super().get_off_policy_mask(advantages, per_token_logps, sampling_per_token_logps, mask,
                                               off_policy_threshold)
        inputs = self._loss_inputs
        gates = self.drift_gate.gates_B_T(per_token_logps, inputs["behaviour_logps"], mask, inputs["completion_ids"])
        self._last_gates = gates
        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            valid = mask.bool()
            drift = (per_token_logps.detach() - inputs["behaviour_logps"]).abs()
            self._metrics[mode]["omniopd/drift_abs_mean"].append(float(drift[valid].mean()) if valid.any() else 0.0)
            self._metrics[mode]["omniopd/drift_gate_min"].append(float(gates[valid].min()) if valid.any() else 1.0)
        return gates

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, **kwargs):
        if not self._keep_logits:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, **kwargs)
        # One ordinary forward whose full log-softmax is kept for the exact KL anchor.
        logp = self._completion_logp_B_T_V(model, input_ids, attention_mask, logits_to_keep)
        targets = input_ids[:, -logits_to_keep:]
        per_token = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropies = None
        if compute_entropy:
            with torch.no_grad():
                entropies = entropy_B(logp)
        self._kept_logp = logp
        return per_token, entropies, None

    def _completion_logp_B_T_V(self, model, input_ids, attention_mask, logits_to_keep) -> torch.Tensor:
        with self.accelerator.autocast():
            logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep + 1).logits
        logits = logits[:, :-1].float() / self.temperature
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def _reference_logp_B_T_V(self, input_ids, attention_mask, logits_to_keep) -> torch.Tensor:
        if self._uses_peft:
            unwrapped = self.accelerator.unwrap_model(self.model)
            with unwrapped.disable_adapter():
                return self._completion_logp_B_T_V(self.model, input_ids, attention_mask, logits_to_keep)
        return self._completion_logp_B_T_V(self.omni_ref_model, input_ids, attention_mask, logits_to_keep)

    def _compute_loss(self, model, inputs):
        anchor = self.kl_beta > 0
        self._keep_logits = anchor or (self.method is not None and self.method.needs_logits)
        self._loss_inputs, self._last_gates = inputs, None
        try:
            policy_loss = super()._compute_loss(model, inputs)
        finally:
            self._keep_logits = False
            self._loss_inputs = None
        mode = "train" if self.model.training else "eval"
        normalizer = self._token_normalizer(inputs, mode)
        mask = inputs["completion_mask"].float()
        adv = inputs["advantages"]
        m = self._metrics[mode]
        logp = self._kept_logp
        self._kept_logp = None
        policy_loss = policy_loss + self._method_extra_loss(logp, inputs, mask, normalizer, m)
        if not anchor:
            m["omniopd/kl"].append(0.0)
            return policy_loss
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        T = inputs["completion_ids"].size(1)
        ref_logp = self._reference_logp_B_T_V(input_ids, attention_mask, T)
        kl_B_T = exact_kl_B_T(ref_logp, logp)
        kl_mask = mask * (~inputs["audit_mask"]).float()
        kl_term = (kl_B_T * kl_mask).sum() / normalizer
        with torch.no_grad():
            per_token = logp.gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
            chunk_term = -(adv * per_token * mask).sum() / normalizer
            m["omniopd/chunk_loss"].append(float(chunk_term))
            m["omniopd/kl_loss"].append(float(self.kl_beta * kl_term))
            m["omniopd/kl"].append(float((kl_B_T * kl_mask).sum() / kl_mask.sum().clamp(min=1.0)))
        return policy_loss + self.kl_beta * kl_term

    def _method_extra_loss(self, logp, inputs, mask, normalizer, m) -> torch.Tensor | float:
        """A method's own per-token loss term (TrOPD's outlier forward KL), drift-gated like the rest."""
        extra = None if self.method is None else self.method.extra_loss_B_T(logp, inputs)
        if extra is None:
            return 0.0
        if self._last_gates is not None:
            extra = extra * self._last_gates
        term = (extra * mask).sum() / normalizer
        m["omniopd/method_extra_loss"].append(float(term.detach()))
        return term

    def create_model_card(self, *args, **kwargs) -> None:
        """TRL's GRPO card (no base model, "trained with GRPO", DeepSeekMath) is not written:
        `final/README.md` is omniopd's own (`omniopd.model_card`, written by `train.save_final`)."""
        return None

    def _token_normalizer(self, inputs, mode: str) -> torch.Tensor:
        # TRL's "dapo" normaliser: completion tokens of the generation batch, rescaled to one
        # accumulation window, so the anchor is on the same scale as the policy term.
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return normalizer
