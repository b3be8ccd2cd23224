"""The OmniOPD learner: a `trl.GRPOTrainer` subclass at two documented hooks (DESIGN §1.5).

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
- `compute_loss`: one policy backbone forward, the per-token terms from `omniopd.head` (log
  pi_theta(y_t), the exact full-vocabulary KL(pi_ref || pi_theta) on unaudited tokens, a
  method's top-k log-probs) computed in slices of the sequence so no (B, T, V) tensor exists,
  and the loss itself from the pure `omniopd.loss.omniopd_loss`. pi_ref is the base student:
  the adapter disabled under LoRA, else a frozen copy placed by accelerate like the policy
  (DeepSpeed / FSDP / DDP), as TRL places its own reference model.

Normalisation (the paper writes a plain sum): both terms are summed over tokens and divided by
the number of completion tokens in the batch (TRL's `loss_type="dapo"` normaliser), so their
ratio is the paper's and the scale does not depend on completion length.
"""

from __future__ import annotations

import collections
import copy
import functools
import math
import time
import types
from collections.abc import Callable
from typing import Any

import torch
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation

from omniopd.errors import BudgetExceededError
from omniopd.head import HeadRequest
from omniopd.loss import omniopd_loss
from omniopd.methods.drift_gate import DriftGate
from omniopd.microbatch import combine_stats, microbatches, pad_rows_to_multiple
from omniopd.methods.signals import MethodSignals, ScoredBatch
from omniopd.pipeline import Pipeline
from omniopd.recompute import rollouts_from_token_ids
from omniopd.rollouts import Rollouts, generate_rollouts


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
                 microbatch_tokens: int | None = None, **kwargs):
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
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self.async_steps = async_steps
        self.microbatch_tokens = microbatch_tokens  # padded tokens per forward/backward; None = the whole batch
        # started batches, oldest first: (global step when sampled, callable that finishes its scoring)
        self._ahead: collections.deque[tuple[int, Callable[[], ScoredBatch]]] = collections.deque()
        self._uses_peft = hasattr(self.model, "disable_adapter")
        add_head_output(self.model.get_base_model() if self._uses_peft else self.model)
        if ref_model is not None:
            ref_model.requires_grad_(False).eval()
            add_head_output(ref_model)
            ref_model = self._prepare_reference(ref_model)
        self.omni_ref_model = ref_model

    def _prepare_reference(self, ref_model):
        """The frozen reference placed like the policy: DeepSpeed, FSDP or plain accelerate (as TRL's own ref_model)."""
        from trl.models import prepare_deepspeed, prepare_fsdp

        if self.is_deepspeed_enabled:
            return prepare_deepspeed(ref_model, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    # -- rollouts and audit -------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """TRL's batch dict for `inputs` (`_scored_batch`), padded for TRL's split into steps_per_generation
        slices: TRL makes equal slices and drops a remainder, and a signal's appended rows make the row
        count arbitrary, so empty rows are added until every real row lands in exactly one slice."""
        out = self._scored_batch(inputs)
        if self.model.training and self.args.steps_per_generation > 1:
            out = pad_rows_to_multiple(out, self.args.steps_per_generation)
        return out

    def _scored_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Rollouts (sampled, replayed or from vLLM), scored by the pipeline or the method's signals."""
        mode = "train" if self.model.training else "eval"
        prompts = [x["prompt"] for x in inputs]
        t0 = time.perf_counter()
        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
            # the queue of started batches: with --async-steps N it holds up to N + 1 (bounded staleness);
            # evaluation never takes from (or adds to) the training queue
            queue = self._ahead if mode == "train" else collections.deque()
            audit, sampling_s, sampled_at = self._next_scored(queue, mode, inputs, prompts, unwrapped)
        rollouts = audit.rollouts
        t2 = time.perf_counter()
        t1 = t0 + sampling_s  # audit_seconds: what scoring cost this thread (sync: all of it; async: the wait)
        device = self.accelerator.device
        completion_mask = rollouts.completion_mask.to(device)
        student_rows = audit.student_rows or completion_mask.size(0)  # rows a signal appended are not normalised over
        n_tokens = completion_mask[:student_rows].sum()
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
        local = {f"omniopd/{name}": value for name, value in audit.metrics.items()}
        local.update({"omniopd/rollout_seconds": t1 - t0, "omniopd/rollout_staleness": float(self.state.global_step - sampled_at),
                      "omniopd/audit_seconds": t2 - t1,
                      "completions/mean_length": float(n_tokens) / max(1, student_rows)})
        if self.pipeline is not None:
            local["omniopd/teacher_samples_total"] = float(self.pipeline.teacher_samples_total)
        m = self._metrics[mode]
        for name, value in reduce_over_processes(local, self.accelerator).items():
            m[name].append(value)
        return out

    def _next_scored(self, queue, mode, inputs, prompts, unwrapped):
        """Fill the queue of started batches, then finish the oldest: (scored batch, sampling seconds, step sampled at)."""
        sampling_s = 0.0
        while len(queue) < self._batches_wanted(mode):
            t_sample = time.perf_counter()
            if self.replay is not None:  # offline replay: the recorded rollouts, with their behaviour log-probs
                rollouts = self.replay.rollouts(self.state.global_step // self.num_iterations)
            elif self.method is not None and not self.method.needs_rollouts:
                rollouts = None  # a signal that trains on teacher text alone (--method sft): nothing to sample
            elif self.use_vllm:
                rollouts = self._vllm_rollouts(unwrapped, prompts)
            else:
                rollouts = generate_rollouts(unwrapped, self.processing_class, prompts,
                                             max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                             progress=self.progress)
            sampling_s += time.perf_counter() - t_sample
            queue.append((self.state.global_step, self._start_scoring(rollouts, inputs, unwrapped)))
        sampled_at, finish = queue.popleft()
        audit = finish()
        return audit, sampling_s, sampled_at

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
        agree = self._ranks_agree_on_budget
        if self.method is not None:
            golds = [x.get("answer") for x in inputs]
            prompts = [x["prompt"] for x in inputs]
            if self.async_steps == 0:
                scored = agree(lambda: self.method.score(rollouts, golds, step, student, prompts=prompts))
                return lambda: scored
            finish = self.method.start(rollouts, golds, step, student, prompts=prompts)
            return lambda: agree(lambda: finish(step=self.state.global_step))
        if self.async_steps == 0:
            audit = agree(lambda: self.pipeline.audit(rollouts, step=step))
            return lambda: self._scored(audit, rollouts)
        pending = self.pipeline.start(rollouts, step=step)
        # finished when a step takes it: the episode is recorded under the step that trains on it
        return lambda: self._scored(agree(lambda: self.pipeline.finish(pending, step=self.state.global_step)), rollouts)

    def _ranks_agree_on_budget(self, score: Callable[[], Any]) -> Any:
        """`score()`, except that when any rank meets the spend cap (`BudgetExceededError` from the
        run's shared ledger) every rank raises it, at the same point: one rank stopping alone
        would leave the others waiting in the gradient all-reduce."""
        if self.accelerator.num_processes == 1:
            return score()
        from accelerate.utils import gather_object

        error = None
        try:
            out = score()
        except BudgetExceededError as exc:
            error, out = exc, None
        if any(gather_object([error is not None])):
            raise error or BudgetExceededError(
                "another rank of this run reached --max-teacher-usd; the run stopped cleanly with a checkpoint — "
                "raise --max-teacher-usd and rerun with --resume to continue")
        return out

    @staticmethod
    def _scored(audit, rollouts) -> ScoredBatch:
        return ScoredBatch(audit.rollouts or rollouts, audit.advantages_B_T, audit.audit_mask_B_T, extra=audit.extra,
                           metrics=audit.metrics)

    # -- loss -----------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The one loss override: per-token terms from `omniopd.head`, the loss from `omniopd.loss`.

        Replaces TRL's `_compute_loss` (whose policy term, with beta = 0 and loss_type "dapo",
        `omniopd_loss` reproduces) so that every input of the loss is explicit and nothing is
        carried between TRL's private methods.

        The batch is forwarded in micro-batches of at most `microbatch_tokens` padded tokens
        (`omniopd.microbatch`): every micro-batch but the last is backpropagated here, the last
        one's loss is returned to TRL's `training_step`, which backpropagates it with the same
        gradient-accumulation scale. The loss is a token sum over one normaliser, so the summed
        gradients equal the one-batch gradient and peak memory follows the budget, not the
        number of rows a signal appended.
        """
        if return_outputs:
            raise ValueError("OmniOPDTrainer does not return outputs from compute_loss")
        mode = "train" if self.model.training else "eval"
        parts = microbatches(inputs, self.microbatch_tokens)
        backward_here = len(parts) > 1 and torch.is_grad_enabled() and mode == "train"
        if backward_here and self.is_deepspeed_enabled:
            raise ValueError("DeepSpeed counts one backward per micro-step: set --max-tokens-per-microbatch 0 and "
                             "bound memory with --gradient-accumulation-steps instead")
        scale = self._accumulation_scale(num_items_in_batch)
        done, collected, loss = None, [], None
        for i, mb in enumerate(parts):
            if backward_here and i < len(parts) - 1:
                # local accumulation, forward and backward under no_sync (DDP prepares its gradient
                # all-reduce in the forward); only the last micro-batch's backward, in TRL's
                # training_step, syncs — one all-reduce per rank whatever its number of micro-batches
                with self.accelerator.no_sync(self.model_wrapped):
                    loss, stats, weights = self._microbatch_loss(model, mb, mode)
                    self.accelerator.backward(loss * scale)
                done = loss.detach() if done is None else done + loss.detach()
            else:
                loss, stats, weights = self._microbatch_loss(model, mb, mode)
            collected.append((stats, weights))
        self._log_loss_stats(mode, combine_stats(collected))
        self._metrics[mode]["omniopd/microbatches"].append(float(len(parts)))
        return loss if done is None else loss + done

    def _accumulation_scale(self, num_items_in_batch) -> float:
        """The factor `Trainer.training_step` applies to the returned loss before its backward."""
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        return 1.0 if scaled else 1.0 / self.current_gradient_accumulation_steps

    def _microbatch_loss(self, model, inputs, mode: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        """(loss, stats, weights) of one micro-batch; weights are the token counts mean stats are over."""
        mask = inputs["completion_mask"]
        terms = self._token_terms_B_T(model, inputs)
        logp = terms["logp"]
        gate = None
        if self.drift_gate is not None:
            gate = self.drift_gate.gates_B_T(logp.detach(), inputs["behaviour_logps"], mask, inputs["completion_ids"])
        extra = None if self.method is None else self.method.extra_loss_B_T(terms.get("ids_logp"), inputs)
        old = inputs.get("old_per_token_logps")
        loss, stats = omniopd_loss(
            logp, logp.detach() if old is None else old, inputs["advantages"], mask, inputs["audit_mask"],
            normaliser=self._token_normalizer(inputs, mode), beta=self.kl_beta, kl_B_T=terms.get("kl"),
            gate_B_T=gate, extra_B_T=extra, epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high)
        valid = mask.bool()
        n_valid = float(valid.sum())
        zero = logp.new_zeros(())
        ent = terms["entropy"]
        stats["entropy"] = ent[valid].mean() if valid.any() else zero
        if extra is None:
            stats.pop("extra_loss")
        if gate is not None:
            drift = (logp.detach() - inputs["behaviour_logps"]).abs()
            stats["drift_abs_mean"] = drift[valid].mean() if valid.any() else zero
            stats["drift_gate_min"] = gate[valid].min() if valid.any() else logp.new_ones(())
        weights = {"kl": float(stats["anchored_tokens"]), "clip_ratio": n_valid, "entropy": n_valid,
                   "drift_abs_mean": n_valid}
        return loss, stats, weights

    def _token_terms_B_T(self, model, inputs) -> dict[str, torch.Tensor]:
        """(B, T) log pi(y_t), entropy, KL(pi_ref || pi) on anchored tokens, log pi at a method's ids.

        One forward of the policy (through its DDP/DeepSpeed/FSDP wrapper) that applies the head
        in slices (`omniopd.head`), so no (B, T, V) tensor exists. The reference (the adapter
        disabled under LoRA, else the frozen copy) runs one no-grad forward when the anchor is on.
        """
        completion_ids = inputs["completion_ids"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        valid = inputs["completion_mask"].bool()
        req = HeadRequest(valid, targets_N=completion_ids[valid], temperature=self.temperature)
        if self.kl_beta > 0:
            req.ref_hidden_N_H, req.ref_weight_V_H, req.ref_bias_V = self._reference_hidden(input_ids, attention_mask, valid)
            req.kl_mask_N = (~inputs["audit_mask"].bool())[valid]
        ids = None if self.method is None else self.method.head_ids_B_T_K(inputs)
        if ids is not None:
            req.ids_N_K = ids[valid]
        with self.accelerator.autocast():
            out = model(input_ids=input_ids, attention_mask=attention_mask, omniopd_head=req)
        terms = {"logp": _unflatten(out.logp_N, valid), "entropy": _unflatten(out.entropy_N, valid)}
        if out.kl_N is not None:
            terms["kl"] = _unflatten(out.kl_N, valid)
        if out.ids_logp_N_K is not None:
            terms["ids_logp"] = _unflatten(out.ids_logp_N_K, valid)
        return terms

    @torch.no_grad()
    def _reference_hidden(self, input_ids, attention_mask, valid_B_T):
        """(hidden (N, H), head weight, head bias) of pi_ref at the positions predicting the valid tokens."""
        req = HeadRequest(valid_B_T, hidden_only=True)
        if self._uses_peft:
            unwrapped = self.accelerator.unwrap_model(self.model)
            with unwrapped.disable_adapter(), self.accelerator.autocast():
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, omniopd_head=req)
            return (hidden, *_head_params(unwrapped))
        with self.accelerator.autocast():
            hidden = self.omni_ref_model(input_ids=input_ids, attention_mask=attention_mask, omniopd_head=req)
        return (hidden, *_head_params(self.accelerator.unwrap_model(self.omni_ref_model)))

    def _log_loss_stats(self, mode, stats: dict[str, torch.Tensor]) -> None:
        """A step's loss stats (combined over its micro-batches) into TRL's metrics, each averaged
        over the processes (so every rank logs the same)."""
        m = self._metrics[mode]
        mean = self._mean_over_processes
        for name in ("chunk_loss", "kl_loss", "kl", "policy_loss"):
            m[f"omniopd/{name}"].append(mean(stats[name]))
        m["clip_ratio/region_mean"].append(mean(stats["clip_ratio"]))
        m["entropy"].append(mean(stats["entropy"]))
        if "extra_loss" in stats:
            m["omniopd/method_extra_loss"].append(mean(stats["extra_loss"]))
        if "drift_gate_min" in stats:
            m["omniopd/drift_abs_mean"].append(mean(stats["drift_abs_mean"]))
            m["omniopd/drift_gate_min"].append(-mean(-stats["drift_gate_min"], "max"))

    def _mean_over_processes(self, value: torch.Tensor, how: str = "mean") -> float:
        v = self.accelerator.gather(value.detach().float().reshape(1).to(self.accelerator.device))
        return float(v.max() if how == "max" else v.mean())

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


# Audit metrics that count things (or money) per process: summed over processes; seconds: the
# slowest process; run totals read from the shared spend ledger (already global): the latest
# reading; everything else (means, shares, minima of a step) is averaged.
_GLOBAL = ("teacher_cost_usd_total",)
_SUMMED = ("forks", "forks_requested", "teacher_samples", "teacher_samples_total", "teacher_failed_chunks",
           "teacher_cost_usd", "audited_tokens", "unaudited_tokens", "replay_missed_forks",
           "replay_missed_forks_step", "teacher_scored_tokens", "sg_teacher_rows", "sg_teacher_offered",
           "tropd_guided_rows", "tropd_prefix_tokens", "verifier_judged")


def reduce_over_processes(metrics: dict[str, float], accelerator) -> dict[str, float]:
    """One step's per-process metrics made global: sums for counts, max for seconds, else the mean.

    Every rank gets the same values, so whichever rank writes metrics.jsonl writes the run's.
    Uses `gather_object` (the key sets may differ between ranks, e.g. a method's optional stats).
    """
    if accelerator.num_processes == 1:
        return dict(metrics)
    from accelerate.utils import gather_object

    per_rank = gather_object([metrics])
    out: dict[str, float] = {}
    for key in sorted({k for d in per_rank for k in d}):
        values = [float(d[key]) for d in per_rank if key in d]
        name = key.split("/", 1)[-1]
        if name in _SUMMED:
            out[key] = sum(values)
        elif name.endswith("_seconds") or name in _GLOBAL:
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out


def _unflatten(values_N: torch.Tensor, valid_B_T: torch.Tensor) -> torch.Tensor:
    """Back to (B, T[, K]) with zeros where `valid_B_T` is False (differentiable in `values_N`)."""
    shape = (*valid_B_T.shape, *values_N.shape[1:])
    where = valid_B_T.reshape(*valid_B_T.shape, *([1] * (values_N.dim() - 1))).expand(shape)
    return values_N.new_zeros(shape).masked_scatter(where, values_N)


def _head_params(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of the model's LM head; a LoRA-adapted head is refused (the head math would skip it)."""
    head = model.get_output_embeddings()
    if hasattr(head, "base_layer"):
        raise ValueError("a LoRA adapter on lm_head is not supported: leave lm_head out of the adapter's target modules")
    return head.weight, getattr(head, "bias", None)


def add_head_output(model) -> None:
    """Let `model(..., omniopd_head=HeadRequest(...))` run the backbone and then our sliced head.

    The learner calls the (DDP/DeepSpeed/FSDP-wrapped) model so the wrapper's hooks run and the
    head weight is used inside forward; other calls (generation) are unchanged. The same
    technique as TRL's `add_fused_lm_head`, layered on top of it.
    """
    forward = model.forward

    @functools.wraps(type(model).forward)
    def _forward(self, *args, omniopd_head=None, **kwargs):
        if omniopd_head is None:
            return forward(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        return omniopd_head.run(hidden, *_head_params(self))

    model.forward = types.MethodType(_forward, model)
