"""Peak memory of one learner step as forks grow: micro-batched by tokens vs one batch.

    python bench/step_memory.py [--forks 10,40,80] [--budget TOKENS] [--layers N] [--limit-gb 16]

The packaged SmolLM2-135M-Instruct student (optionally its first `--layers` decoder layers, for
a quicker run) and a batch shaped like one step of `omniopd train`'s embedded defaults: G = 4
completions x 2 prompts of 256 new tokens after a ~120-token prompt, plus one appended
fork-imitation row per fork (prompt + the student's prefix before the fork, then the teacher's
continuation to the end of the answer: ~4 x 50 teacher tokens). Forks F = 10, 40, 80 (the
defaults allow up to 10 per completion, 80 per step). Token ids are random (memory and time do
not depend on them); the KL anchor runs against a frozen copy of the student, as in a full-weight
run.

Each (F, arm) is one fresh subprocess that runs one learner step: `compute_loss` (which
backpropagates every micro-batch but the last) and the backward of the returned loss, as TRL's
`training_step` does. Peak = the kernel's high-water mark of that process's resident set
(VmHWM, reset just before the step) — every byte the step touches, the model, reference copy
and gradients included. Arms:

  micro      `--max-tokens-per-microbatch` = `--budget` (default: omniopd's CPU default)
  one-batch  the whole batch in one forward/backward: the learner before micro-batching

The one-batch arm runs under an address-space limit (`--limit-gb`) so it fails cleanly instead
of waking the OOM killer; a refused arm is printed as "> limit". The last lines print the
largest over the smallest micro-batched peak (target <= 1.25).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT, COMPLETION, GENERATIONS, PROMPTS = 120, 256, 4, 2
TEACHER_TOKENS = 200  # token_factor 4 x chunk 50


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def default_shaped_batch(forks: int, vocab: int, seed: int = 0) -> dict:
    """TRL's batch dict for one default step with `forks` appended imitation rows (see module doc)."""
    import torch

    from omniopd.rollouts import pad_rows_B_T

    g = torch.Generator().manual_seed(seed)
    B = GENERATIONS * PROMPTS
    prompts = [torch.randint(0, vocab, (PROMPT,), generator=g).tolist() for _ in range(B)]
    comps = [torch.randint(0, vocab, (COMPLETION,), generator=g).tolist() for _ in range(B)]
    adv_rows, audit_rows = [[0.0] * COMPLETION for _ in range(B)], [[False] * COMPLETION for _ in range(B)]
    for f in range(forks):
        b = f % B
        start = int(torch.randint(0, COMPLETION - 50, (1,), generator=g))
        for t in range(start, start + 50):
            adv_rows[b][t], audit_rows[b][t] = 0.3, True
        prompts.append(prompts[b] + comps[b][:start])
        n = int(torch.randint(TEACHER_TOKENS // 2, TEACHER_TOKENS + 1, (1,), generator=g))
        comps.append(torch.randint(0, vocab, (n,), generator=g).tolist())
        adv_rows.append([2.0] * n)
        audit_rows.append([True] * n)
    mask = pad_rows_B_T([[1] * len(c) for c in comps], 0, torch.long)
    return {
        "prompt_ids": pad_rows_B_T(prompts, 0, torch.long, left=True),
        "prompt_mask": pad_rows_B_T([[1] * len(p) for p in prompts], 0, torch.long, left=True),
        "completion_ids": pad_rows_B_T(comps, 0, torch.long), "completion_mask": mask,
        "advantages": pad_rows_B_T(adv_rows, 0.0, torch.float32),
        "audit_mask": pad_rows_B_T(audit_rows, False, torch.bool),
        "behaviour_logps": torch.zeros(mask.shape), "num_items_in_batch": mask[:B].sum(),
    }


def run_child(args) -> dict:
    sys.path.insert(0, str(ROOT))
    import copy

    import torch
    from datasets import Dataset
    from trl import GRPOConfig

    from omniopd.learner import OmniOPDTrainer
    from omniopd.models import load_causal_lm

    torch.manual_seed(0)
    model, tok = load_causal_lm("smollm2")
    if args.layers:
        model.model.layers = model.model.layers[: args.layers]
        model.config.num_hidden_layers = args.layers
    budget = None if args.arm == "one-batch" else args.budget
    gargs = GRPOConfig(output_dir="/tmp/omniopd-step-memory", per_device_train_batch_size=8, num_generations=4,
                       beta=0.0, loss_type="dapo", use_cpu=True, bf16=False, report_to=[], max_steps=1,
                       remove_unused_columns=False, max_completion_length=COMPLETION)
    trainer = OmniOPDTrainer(model=model, ref_model=copy.deepcopy(model), args=gargs,
                             train_dataset=Dataset.from_list([{"prompt": "x"}] * 8), processing_class=tok,
                             pipeline=object(), kl_beta=0.1, microbatch_tokens=budget)
    inputs = default_shaped_batch(args.forks, model.config.vocab_size)
    tokens = int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this bench does not run
    before_kib = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    t0 = time.perf_counter()
    loss = trainer.compute_loss(trainer.model, inputs)
    trainer.accelerator.backward(loss)
    seconds = time.perf_counter() - t0
    peak_kib = _kib("VmHWM")
    return {"forks": args.forks, "arm": args.arm, "rows": int(inputs["completion_ids"].size(0)), "tokens": tokens,
            "peak_gib": peak_kib / 2**20, "step_gib": (peak_kib - before_kib) / 2**20, "seconds": seconds,
            "microbatches": trainer._metrics["train"]["omniopd/microbatches"][-1]}


def main(argv=None) -> int:
    from omniopd.memory import CPU_MICROBATCH_TOKENS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forks", default="10,40,80", help="comma-separated fork counts")
    ap.add_argument("--budget", type=int, default=CPU_MICROBATCH_TOKENS, help="padded tokens per micro-batch")
    ap.add_argument("--layers", type=int, default=0, help="keep only the first N decoder layers (0 = all 30)")
    ap.add_argument("--limit-gb", type=float, default=16.0, help="address-space limit of the one-batch arm")
    ap.add_argument("--skip-one-batch", action="store_true", help="measure the micro-batched arm only")
    ap.add_argument("--arm", choices=("micro", "one-batch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.arm:
        args.forks = int(args.forks)
        print(json.dumps(run_child(args)))
        return 0
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"one learner step, packaged SmolLM2 ({args.layers or 30} layers), default shapes + F imitation rows, "
          f"budget {args.budget} tokens", flush=True)
    peaks: dict[str, dict[int, float | None]] = {"micro": {}, "one-batch": {}}
    for forks in [int(x) for x in args.forks.split(",")]:
        for arm in ("micro", "one-batch"):
            if arm == "one-batch" and args.skip_one_batch:
                continue
            cmd = [sys.executable, __file__, "--arm", arm, "--forks", str(forks), "--budget", str(args.budget),
                   "--layers", str(args.layers)]
            limit = int(args.limit_gb * 2**30) if arm == "one-batch" else None

            def cap(limit=limit):
                if limit:
                    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

            out = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=cap)
            if out.returncode != 0:
                why = "out of memory" if "memory" in out.stderr.lower() or "alloc" in out.stderr.lower() else "failed"
                print(f"F={forks:3d} {arm:>9}: > {args.limit_gb:.0f} GiB ({why}, exit {out.returncode})"
                      if limit else f"F={forks:3d} {arm:>9}: failed (exit {out.returncode})\n{out.stderr[-2000:]}",
                      flush=True)
                peaks[arm][forks] = None
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            peaks[arm][forks] = r["peak_gib"]
            print(f"F={forks:3d} {arm:>9}: rows {r['rows']:3d}  tokens {r['tokens']:6d}  micro-batches "
                  f"{r['microbatches']:3.0f}  peak {r['peak_gib']:6.2f} GiB (step +{r['step_gib']:5.2f})  "
                  f"{r['seconds']:6.1f} s", flush=True)
    micro = [v for v in peaks["micro"].values() if v is not None]
    if micro:
        print(f"micro-batched peak ratio largest/smallest = {max(micro) / min(micro):.3f} (target <= 1.25)")
    one = {f: v for f, v in peaks["one-batch"].items() if v is not None}
    for f, v in one.items():
        if peaks["micro"].get(f):
            print(f"F={f}: one-batch / micro-batched peak = {v / peaks['micro'][f]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
