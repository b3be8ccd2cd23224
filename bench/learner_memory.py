"""Peak memory and time of one learner step: our OmniOPD loss vs plain `trl.GRPOTrainer` (beta = 0).

    OMP_NUM_THREADS=1 python bench/learner_memory.py [--batch 8] [--completion 512] [--code DIR]

A tiny Llama student whose vocabulary is Qwen3's (151,936: a large embedding on a small model,
untied head), one batch of B completions of T tokens after a P-token prompt, built from a seed
so both arms see exactly the same tensors. The audit mask is what our scheduler picks with the
paper's defaults (C = 50, M = 10) on random entropies; advantages are pihat-like values in
(0, 1) on audited tokens. Arms:

  trl      plain `trl.GRPOTrainer`, beta = 0, loss_type "dapo": TRL's fused chunked log-prob head
  omniopd  `OmniOPDTrainer`, beta = 0.1: the policy term + the exact KL(pi_ref || pi_theta) on
           unaudited tokens against a frozen full copy of the student (the non-LoRA case)

A learner step here is the loss forward + backward (`compute_loss` + `accelerator.backward`),
the part the two arms differ in; the optimizer step is the same in both and left out (it would
only dilute the ratio). Each arm runs in a fresh subprocess: one warm-up step, then 2 timed
steps; time = the faster timed step.

Peak memory (CPU): the kernel's peak resident set of that subprocess during the timed steps
(VmHWM, reset through /proc/self/clear_refs just before them) minus its resident set before any
model was built (interpreter + libraries). It counts every byte the step touches - torch
tensors, the allocator's slack, the frozen reference copy - which tracemalloc (Python objects
only) would miss. glibc is told to return large frees to the kernel (MALLOC_MMAP_THRESHOLD_),
so a freed tile does not linger in RSS and the peak is the step's real high-water mark.

`--code DIR` benchmarks the omniopd found in DIR (e.g. an untouched checkout of main) - that is
how the figure from before the sliced loss was measured. The last line is
`peak_ratio=<ours/TRL> time_ratio=<ours/TRL>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 151_936


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _batch(args, tok_len: int):
    import torch

    from scheduler.forks import chunk_starts_B

    g = torch.Generator().manual_seed(0)
    B, P, T = args.batch, args.prompt, args.completion
    prompt_ids = torch.randint(0, VOCAB, (B, P), generator=g)
    completion_ids = torch.randint(0, VOCAB, (B, T), generator=g)
    lengths = [T] * B
    starts = chunk_starts_B(torch.rand(B, T, generator=g), lengths, 50, 10)
    audit = torch.zeros(B, T, dtype=torch.bool)
    for b, ss in enumerate(starts):
        for s in ss:
            audit[b, s:s + 50] = True
    adv = torch.where(audit, torch.rand(B, T, generator=g), torch.zeros(B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    return {"prompt_ids": prompt_ids, "prompt_mask": torch.ones(B, P, dtype=torch.long),
            "completion_ids": completion_ids, "completion_mask": mask, "advantages": adv, "audit_mask": audit,
            "behaviour_logps": torch.zeros(B, T), "num_items_in_batch": mask.sum()}


def run_arm(args) -> dict:
    """One arm in this (fresh) process; returns its figures."""
    sys.path.insert(0, str(Path(args.code).resolve()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    base_kib = _rss_kib("VmRSS")
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    B = args.batch
    gargs = GRPOConfig(output_dir="/tmp/omniopd-learner-memory", per_device_train_batch_size=B, num_generations=B,
                       beta=0.0, loss_type="dapo", use_cpu=True, bf16=False, report_to=[], max_steps=1,
                       remove_unused_columns=False, max_completion_length=args.completion)
    data = Dataset.from_list([{"prompt": "x"}] * B)
    if args.arm == "trl":
        trainer = GRPOTrainer(model=model, args=gargs, train_dataset=data, processing_class=tok,
                              reward_funcs=lambda **kw: [0.0] * B)
    else:
        from omniopd.learner import OmniOPDTrainer

        trainer = OmniOPDTrainer(model=model, args=gargs, train_dataset=data, processing_class=tok,
                                 pipeline=object(), kl_beta=0.1)
    inputs = _batch(args, len(tok))
    audited_share = float(inputs["audit_mask"].float().mean())
    if args.arm == "trl":
        inputs = {k: v for k, v in inputs.items() if k not in ("audit_mask", "behaviour_logps")}
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this bench does not run

    def step() -> float:
        t0 = time.perf_counter()
        loss = trainer.compute_loss(trainer.model, inputs)
        trainer.accelerator.backward(loss)
        t = time.perf_counter() - t0
        trainer.model.zero_grad(set_to_none=False)
        return t

    step()  # warm-up: allocates .grad, first-call costs
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    times = [step() for _ in range(args.steps)]
    peak_kib = _rss_kib("VmHWM")
    return {"arm": args.arm, "seconds": min(times), "all_seconds": times, "peak_mib": (peak_kib - base_kib) / 1024,
            "audited_share": audited_share}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="B: completions in the batch")
    ap.add_argument("--completion", type=int, default=512, help="T: tokens per completion")
    ap.add_argument("--prompt", type=int, default=64, help="P: prompt tokens")
    ap.add_argument("--hidden", type=int, default=64, help="student hidden size")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per arm (after one warm-up)")
    ap.add_argument("--code", default=str(ROOT), help="checkout whose omniopd is benchmarked")
    ap.add_argument("--arm", choices=("trl", "omniopd"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.arm:
        print(json.dumps(run_arm(args)))
        return 0
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # --code decides which omniopd is imported
    print(f"learner step, B={args.batch} T={args.completion} P={args.prompt} V={VOCAB} hidden={args.hidden}, "
          f"code={args.code}", flush=True)
    res = {}
    for arm in ("trl", "omniopd"):
        cmd = [sys.executable, __file__, "--arm", arm, *sum(([f"--{k}", str(getattr(args, k))] for k in
                                                             ("batch", "completion", "prompt", "hidden", "steps", "code")), [])]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            print(f"{arm}: failed (exit {out.returncode})")
            return 1
        res[arm] = json.loads(out.stdout.strip().splitlines()[-1])
        r = res[arm]
        print(f"{arm:>8}: peak {r['peak_mib']:8.1f} MiB  step {r['seconds']:6.2f} s  "
              f"(timed {', '.join(f'{t:.2f}' for t in r['all_seconds'])}; audited share {r['audited_share']:.2f})",
              flush=True)
    print(f"peak_ratio={res['omniopd']['peak_mib'] / res['trl']['peak_mib']:.3f} "
          f"time_ratio={res['omniopd']['seconds'] / res['trl']['seconds']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
