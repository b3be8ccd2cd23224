"""Per-token quantities of an LM head, exact over the vocabulary, without (B, T, V) tensors.

From the final hidden states of the N tokens to score (N, H) and the head's weight (V, H),
`head_terms` returns per token

    logp_N      log pi_theta(y_t)                                  (differentiable)
    entropy_N   H(pi_theta)(t)                                     (for metrics; no gradient)
    kl_N        KL(pi_ref || pi_theta)(t) where `kl_mask_N`, else 0 (differentiable in pi_theta)
    ids_logp_N_K log pi_theta(v) at given ids (TrOPD's teacher top-k) (differentiable)

with pi_ref from the reference's hidden states through the reference's head. The tokens are
processed in slices: only a (slice, V) tile of each model's logits exists at a time, so peak
memory grows with the slice, not with N * V. The backward recomputes each slice's logits (as
TRL's `kernels.chunked_logprob` does) and forms the logits' gradient in place:

    dL/dz = g_logp * (e_y - p) + sum_k g_k * (e_k - p) + g_kl * (p - p_ref)       (divided by the temperature)

All arithmetic is fp32 whatever the model's dtype. Under DeepSpeed ZeRO-3 / FSDP2 the head
weight is gathered around each use, as TRL's fused head does.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

# Elements of one (slice, V) fp32 tile: 2^24 = 64 MiB. At V = 151,936 that is 110 tokens a slice.
TILE_ELEMENTS = 1 << 24


def slice_tokens_for(vocab: int, tile_elements: int = TILE_ELEMENTS) -> int:
    """Tokens per slice so that one (slice, vocab) fp32 tile holds about `tile_elements` values."""
    return max(1, tile_elements // max(1, vocab))


@dataclass
class HeadTerms:
    logp_N: torch.Tensor
    entropy_N: torch.Tensor
    kl_N: torch.Tensor | None
    ids_logp_N_K: torch.Tensor | None


@dataclass
class HeadRequest:
    """What the learner asks of a patched model forward (`omniopd.learner.add_head_output`).

    The head runs inside the model's forward so that DDP / DeepSpeed / FSDP see the head weight
    used there (DDP marks parameters unused at the end of forward otherwise). `valid_B_T` marks
    the completion tokens to score (T = its width: the last T + 1 positions predict them);
    `hidden_only` returns those positions' hidden states (N, H) instead (the reference).
    """

    valid_B_T: torch.Tensor
    targets_N: torch.Tensor | None = None
    temperature: float = 1.0
    hidden_only: bool = False
    ref_hidden_N_H: torch.Tensor | None = None
    ref_weight_V_H: torch.Tensor | None = None
    ref_bias_V: torch.Tensor | None = None
    kl_mask_N: torch.Tensor | None = None
    ids_N_K: torch.Tensor | None = None

    def run(self, hidden_B_L_H: torch.Tensor, weight_V_H: torch.Tensor, bias_V: torch.Tensor | None):
        T = self.valid_B_T.size(1)
        hidden_N_H = hidden_B_L_H[:, -T - 1:-1][self.valid_B_T]
        if self.hidden_only:
            return hidden_N_H
        return head_terms(hidden_N_H, weight_V_H, self.targets_N, bias_V=bias_V, ref_hidden_N_H=self.ref_hidden_N_H,
                          ref_weight_V_H=self.ref_weight_V_H, ref_bias_V=self.ref_bias_V, kl_mask_N=self.kl_mask_N,
                          ids_N_K=self.ids_N_K, temperature=self.temperature)


def _gather_ctx(weight, bias):
    try:  # ZeRO-3 partitions the head outside its module's forward; TRL's helper gathers it
        from trl.trainer.utils import maybe_gather_lm_head_ctx
    except ImportError:  # pragma: no cover - older TRL
        return nullcontext()
    return maybe_gather_lm_head_ctx(weight, bias)


def _no_autocast(device: torch.device):
    """The head's arithmetic stays fp32 inside a bf16/fp16 autocast region (the model forward runs in one)."""
    return torch.autocast(device.type, enabled=False)


def _full(t):
    """A DTensor (FSDP2 shard) as the full tensor; anything else as is."""
    return t.full_tensor() if t is not None and hasattr(t, "full_tensor") else t


def _logits(h_n_H: torch.Tensor, w_V_H: torch.Tensor, b_V: torch.Tensor | None, inv_temp: float) -> torch.Tensor:
    z = h_n_H.float() @ w_V_H.t()
    if b_V is not None:
        z += b_V
    if inv_temp != 1.0:
        z *= inv_temp
    return z


def _rowdot(a_n_V: torch.Tensor, b_n_V: torch.Tensor) -> torch.Tensor:
    """sum_v a[n, v] * b[n, v] without an (n, V) temporary."""
    return torch.bmm(a_n_V.unsqueeze(1), b_n_V.unsqueeze(2)).view(-1)


class _SlicedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_N_H, weight_V_H, bias_V, targets_N, ref_hidden_N_H, ref_weight_V_H, ref_bias_V,
                kl_mask_N, ids_N_K, temperature, slice_tokens):
        ctx.set_materialize_grads(False)
        N, dev = hidden_N_H.size(0), hidden_N_H.device
        inv_t = 1.0 / temperature
        logp = torch.empty(N, device=dev)
        entropy = torch.empty(N, device=dev)
        log_z = torch.empty(N, device=dev)
        has_ref = ref_hidden_N_H is not None
        kl = torch.zeros(N, device=dev) if has_ref else None
        ref_log_z = torch.zeros(N, device=dev) if has_ref else None
        ids_logp = None if ids_N_K is None else torch.empty(ids_N_K.shape, device=dev)
        with _gather_ctx(weight_V_H, bias_V), (_gather_ctx(ref_weight_V_H, ref_bias_V) if has_ref else nullcontext()), \
                _no_autocast(dev):
            w, b = _full(weight_V_H).float(), None if bias_V is None else _full(bias_V).float()
            if has_ref:
                rw, rb = _full(ref_weight_V_H).float(), None if ref_bias_V is None else _full(ref_bias_V).float()
            for s in range(0, N, slice_tokens):
                e = min(N, s + slice_tokens)
                z = _logits(hidden_N_H[s:e], w, b, inv_t)
                lz = torch.logsumexp(z, dim=-1)
                z -= lz.unsqueeze(1)  # z is now log p
                log_z[s:e] = lz
                logp[s:e] = z.gather(1, targets_N[s:e].unsqueeze(1)).squeeze(1)
                if ids_logp is not None:
                    ids_logp[s:e] = z.gather(1, ids_N_K[s:e])
                p = z.exp()
                entropy[s:e] = -_rowdot(p, z)
                del p
                if has_ref:
                    rows = kl_mask_N[s:e].nonzero().squeeze(1)
                    if rows.numel():
                        zr = _logits(ref_hidden_N_H[s:e][rows], rw, rb, inv_t)
                        lzr = torch.logsumexp(zr, dim=-1)
                        zr -= lzr.unsqueeze(1)  # log p_ref
                        pr = zr.exp()
                        zs = z if rows.numel() == e - s else z[rows]
                        # KL = sum p_ref * (log p_ref - log p)
                        kl[s + rows] = _rowdot(pr, zr) - _rowdot(pr, zs)
                        ref_log_z[s + rows] = lzr
                        del zr, pr, zs
                del z
        ctx.save_for_backward(hidden_N_H, weight_V_H, bias_V, targets_N, ref_hidden_N_H, ref_weight_V_H, ref_bias_V,
                              kl_mask_N, ids_N_K, log_z, ref_log_z)
        ctx.temperature, ctx.slice_tokens = temperature, slice_tokens
        ctx.mark_non_differentiable(entropy)
        return logp, entropy, kl, ids_logp

    @staticmethod
    def backward(ctx, g_logp, _g_entropy, g_kl, g_ids):
        (hidden, weight, bias, targets, ref_hidden, ref_weight, ref_bias, kl_mask, ids, log_z,
         ref_log_z) = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        N, dev = hidden.size(0), hidden.device
        inv_t, S = 1.0 / ctx.temperature, ctx.slice_tokens
        use_kl = g_kl is not None and ref_hidden is not None
        grad_h = torch.zeros(hidden.shape, device=dev, dtype=torch.float32) if need_h else None
        with _gather_ctx(weight, bias), (_gather_ctx(ref_weight, ref_bias) if use_kl else nullcontext()), _no_autocast(dev):
            w, b = _full(weight).float(), None if bias is None else _full(bias).float()
            grad_w = torch.zeros(w.shape, device=dev, dtype=torch.float32) if need_w else None
            grad_b = torch.zeros(w.size(0), device=dev, dtype=torch.float32) if need_b else None
            if use_kl:
                rw, rb = _full(ref_weight).float(), None if ref_bias is None else _full(ref_bias).float()
            for s in range(0, N, S):
                e = min(N, s + S)
                n = e - s
                coef = torch.zeros(n, device=dev)  # multiplies p in dL/dz
                if g_logp is not None:
                    coef -= g_logp[s:e]
                if g_ids is not None:
                    coef -= g_ids[s:e].sum(-1)
                if use_kl:
                    coef += g_kl[s:e] * kl_mask[s:e]
                dz = _logits(hidden[s:e], w, b, inv_t)
                dz -= log_z[s:e].unsqueeze(1)
                dz.exp_()  # p
                dz *= coef.unsqueeze(1)
                if g_logp is not None:
                    dz.scatter_add_(1, targets[s:e].unsqueeze(1), g_logp[s:e].float().unsqueeze(1))
                if g_ids is not None:
                    dz.scatter_add_(1, ids[s:e], g_ids[s:e].float())
                if use_kl:
                    rows = kl_mask[s:e].nonzero().squeeze(1)
                    if rows.numel():
                        pr = _logits(ref_hidden[s:e][rows], rw, rb, inv_t)
                        pr -= ref_log_z[s + rows].unsqueeze(1)
                        pr.exp_()
                        pr *= -g_kl[s + rows].unsqueeze(1)
                        dz.index_add_(0, rows, pr)
                        del pr
                if inv_t != 1.0:
                    dz *= inv_t
                if grad_h is not None:
                    grad_h[s:e] = dz @ w
                if grad_w is not None:
                    grad_w.addmm_(dz.t(), hidden[s:e].float())
                if grad_b is not None:
                    grad_b += dz.sum(0)
                del dz
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None, None, None, None, None, None, None, None,
        )


def head_terms(
    hidden_N_H: torch.Tensor,
    weight_V_H: torch.Tensor,
    targets_N: torch.Tensor,
    *,
    bias_V: torch.Tensor | None = None,
    ref_hidden_N_H: torch.Tensor | None = None,
    ref_weight_V_H: torch.Tensor | None = None,
    ref_bias_V: torch.Tensor | None = None,
    kl_mask_N: torch.Tensor | None = None,
    ids_N_K: torch.Tensor | None = None,
    temperature: float = 1.0,
    slice_tokens: int | None = None,
) -> HeadTerms:
    """See the module docstring. With `ref_hidden_N_H`, `kl_mask_N` (bool) selects the tokens
    whose KL is computed (the reference head is projected only there); default: every token.
    `ref_weight_V_H` defaults to `weight_V_H` (LoRA: the head is shared, its adapter disabled)."""
    if ref_hidden_N_H is not None:
        if ref_weight_V_H is None:
            ref_weight_V_H, ref_bias_V = weight_V_H, bias_V
        if kl_mask_N is None:
            kl_mask_N = torch.ones(hidden_N_H.size(0), dtype=torch.bool, device=hidden_N_H.device)
        ref_hidden_N_H = ref_hidden_N_H.detach()
        kl_mask_N = kl_mask_N.bool()
    else:
        ref_weight_V_H = ref_bias_V = kl_mask_N = None
    if slice_tokens is None:
        slice_tokens = slice_tokens_for(weight_V_H.size(0) if weight_V_H.dim() == 2 and weight_V_H.numel() else
                                        int(getattr(weight_V_H, "ds_shape", [1])[0]))
    logp, entropy, kl, ids_logp = _SlicedHead.apply(
        hidden_N_H, weight_V_H, bias_V, targets_N.long(), ref_hidden_N_H, ref_weight_V_H, ref_bias_V, kl_mask_N,
        None if ids_N_K is None else ids_N_K.long(), float(temperature), int(slice_tokens))
    return HeadTerms(logp, entropy, kl, ids_logp)
