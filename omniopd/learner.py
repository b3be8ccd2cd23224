"""The OmniOPD learner: a `trl.GRPOTrainer` subclass at its two documented hooks (DESIGN §1.5).

    L = - sum_chunks pihat_c * sum_{t in c} log pi_theta(y_t)  +  beta * sum_{t unaudited} KL(pi_ref || pi_theta)(t)

- `_generate_and_score_completions`: the student's own rollouts (with entropies), audited by
  the `Pipeline`; returns TRL's batch dict with per-token advantages of shape (B, T): pihat
  on audited tokens, 0 elsewhere. TRL's policy term then gives exactly -pihat * grad log pi
  on audited tokens (its ratio is 1 on the first pass; PPO clipping only acts when rollouts
  are reused, `updates_per_batch > 1`).
- `--async-steps N` (`async_steps`): the teacher answers while the student works. Each call
  keeps up to N + 1 started batches (rollouts sampled, teacher requests sent) and trains on the
  oldest, so the rollouts of step s+1 are sampled while the teacher answers step s and every
  update's rollouts are at most N steps stale (`omniopd/rollout_staleness`). Staleness is
  corrected by TRL's own PPO machinery: `old_per_token_logps` is set to the behaviour log-probs
  recorded at sampling, so the loss weighs each token by the clipped ratio pi_theta / pi_behaviour
  (TRL's `epsilon`); `--drift-gate block` is the documented companion. N = 0 is today's order.
  The queue never holds more than N + 1 batches: a teacher outage blocks the step (until the
  client's deadline turns it into per-chunk failures), it never piles up work.
- `--use-vllm`: rollouts come from TRL's vLLM path (`_generate`, colocate or server mode);
  log pi(y_t) and H_t are recomputed by one teacher-forced student forward (omniopd/recompute.py).
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

import collections
import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from omniopd.methods.drift_gate import DriftGate
from omniopd.methods.signals import MethodSignals, ScoredBatch
from omniopd.pipeline import Pipeline
from omniopd.recompute import rollouts_from_token_ids
from omniopd.rollouts import Rollouts, entropy_B, generate_rollouts


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
                 method: MethodSignals | None = None, drift_gate: DriftGate | None = None, async_steps: int = 0,
                 **kwargs):
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
        self.async_steps = async_steps
        # started batches, oldest first: (global step when sampled, callable that finishes its scoring)
        self._ahead: collections.deque[tuple[int, Callable[[], ScoredBatch]]] = collections.deque()
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
            # the queue of started batches: with --async-steps N it holds up to N + 1 (bounded staleness)
            sampling_s = 0.0
            while len(self._ahead) < self._batches_wanted(mode):
                t_sample = time.perf_counter()
                if self.replay is not None:  # offline replay: the recorded rollouts, with their behaviour log-probs
                    rollouts = self.replay.rollouts(self.state.global_step // self.num_iterations)
                elif self.use_vllm:
                    rollouts = self._vllm_rollouts(unwrapped, prompts)
                else:
                    rollouts = generate_rollouts(unwrapped, self.processing_class, prompts,
                                                 max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                                 progress=self.progress)
                sampling_s += time.perf_counter() - t_sample
                self._ahead.append((self.state.global_step, self._start_scoring(rollouts, inputs, unwrapped)))
            sampled_at, finish = self._ahead.popleft()
            audit = finish()
        rollouts = audit.rollouts
        t2 = time.perf_counter()
        t1 = t0 + sampling_s  # audit_seconds: what scoring cost this thread (sync: all of it; async: the wait)
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
        if self.num_iterations > 1 or self.async_steps > 0:
            # the behaviour policy's log-probs, recorded at sampling time: PPO's pi_old. TRL's loss
            # then weighs each token by the clipped ratio pi_theta / pi_behaviour, which corrects
            # for rollouts reused (num_iterations) or sampled steps ago (--async-steps).
            out["old_per_token_logps"] = out["behaviour_logps"]
        m = self._metrics[mode]
        for name, value in audit.metrics.items():
            m[f"omniopd/{name}"].append(value)
        m["omniopd/rollout_seconds"].append(t1 - t0)
        m["omniopd/rollout_staleness"].append(float(self.state.global_step - sampled_at))
        m["omniopd/audit_seconds"].append(t2 - t1)
        m["completions/mean_length"].append(float(n_tokens) / max(1, completion_mask.size(0)))
        return out

    def _vllm_rollouts(self, student, prompts) -> Rollouts:
        """TRL's own vLLM generation (`use_vllm`, colocate or server: it syncs the weights), then
        log pi(y_t) and the exact H_t by one teacher-forced forward of the student (vLLM reports
        neither full-vocabulary entropies nor log-probs under the trainer's numerics).

        Only run where a GPU and vLLM are present; CPU tests cover `rollouts_from_token_ids`.
        """
        prompt_ids, completion_ids = self._generate(prompts)[:2]
        return rollouts_from_token_ids(student, self.processing_class, prompts, prompt_ids, completion_ids,
                                       temperature=self.temperature)

    def _batches_wanted(self, mode: str) -> int:
        """How many started batches the queue should hold before this call takes the oldest.

        Sync (`async_steps=0`) and eval: 1, i.e. generate, score, train, in that order. With N > 0:
        N + 1, so N batches stay in flight with the teacher while this one trains; near the end
        fewer, so that no batch is started that no step would use.
        """
        if mode != "train" or self.async_steps == 0:
            return 1
        if self.args.max_steps <= 0:  # no step count to drain towards
            return self.async_steps + 1
        calls_left = math.ceil(self.args.max_steps / self.num_iterations) - self.state.global_step // self.num_iterations
        return max(1, min(self.async_steps + 1, calls_left))

    def _start_scoring(self, rollouts, inputs: list[dict[str, Any]], student) -> Callable[[], ScoredBatch]:
        """Start this batch's per-token advantages (OmniOPD audit or the method's signals); call the result to finish.

        Sync (`async_steps=0`) scores here, in full (`Pipeline.audit` / `MethodSignals.score`);
        async sends the teacher requests now and waits for them in the returned callable.
        """
        step = self.state.global_step
        if self.method is not None:
            golds = [x.get("answer") for x in inputs]
            if self.async_steps == 0:
                scored = self.method.score(rollouts, golds, step, student)
                return lambda: scored
            return self.method.start(rollouts, golds, step, student)
        if self.async_steps == 0:
            audit = self.pipeline.audit(rollouts, step=step)
            return lambda: self._scored(audit, rollouts)
        pending = self.pipeline.start(rollouts, step=step)
        return lambda: self._scored(self.pipeline.finish(pending), rollouts)

    @staticmethod
    def _scored(audit, rollouts) -> ScoredBatch:
        return ScoredBatch(audit.rollouts or rollouts, audit.advantages_B_T, audit.audit_mask_B_T, extra=audit.extra,
                           metrics=audit.metrics)

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

    def _token_normalizer(self, inputs, mode: str) -> torch.Tensor:
        # TRL's "dapo" normaliser: completion tokens of the generation batch, rescaled to one
        # accumulation window, so the anchor is on the same scale as the policy term.
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if mode == "train":
            normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return normalizer
