"""`omniopd eval`: greedy accuracy and pass@K of a model on math word problems.

    omniopd eval --model smollm2 --data openai/gsm8k --data-config main --split test --limit 200
    omniopd eval --model runs/omniopd --data test.jsonl --samples 8

`--model` is anything `omniopd.models` resolves: 'smollm2' (packaged), a .gguf file, a
transformers directory, a training run's directory (its `final/` model), or a hub id where a
hub is reachable. Writes eval.json (per-problem answers included) and prints a table.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="greedy accuracy and pass@K of a model on math problems",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="'smollm2', a .gguf file, a model directory, a run directory, or a hub id")
    p.add_argument("--data", required=True, help="a .jsonl/.json/.parquet/.csv file, a `save_to_disk` directory, a `datasets` name, or 'demo'")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    p.add_argument("--samples", type=int, default=0, help="K: also sample K completions per problem and report pass@k for k <= K")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature for --samples")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest completion, in tokens")
    p.add_argument("--batch-size", type=int, default=16, help="sequences generated together")
    p.add_argument("--prompt-field", default="question", help="field holding the problem text")
    p.add_argument("--answer-field", default="answer", help="field holding the reference answer (GSM8K's '#### N' is understood)")
    p.add_argument("--split", default="test", help="split to read from a `save_to_disk` directory or a `datasets` name")
    p.add_argument("--data-config", default=None, help="`datasets` config name for --data NAME (GSM8K: main)")
    p.add_argument("--system-prompt", default=None, help="system message prepended to every problem")
    p.add_argument("--output", default="eval.json", help="where to write the report (JSON)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _check_args(args) -> None:
    from omniopd.errors import ConfigError

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1; got {args.limit}")
    if args.samples < 0:
        raise ConfigError(f"--samples must be >= 0; got {args.samples}")
    if args.temperature <= 0:
        raise ConfigError(f"--temperature must be > 0; got {args.temperature}")
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise ConfigError("--max-new-tokens and --batch-size must be >= 1")


def run(args) -> int:
    _check_args(args)
    import torch

    from omniopd.data import load_prompts
    from omniopd.evaluate import evaluate, write_report
    from omniopd.models import load_causal_lm

    rows = load_prompts(args.data, prompt_field=args.prompt_field, answer_field=args.answer_field, split=args.split,
                        limit=args.limit, system_prompt=args.system_prompt, config=args.data_config)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    model, tok = load_causal_lm(args.model)
    result = evaluate(model, tok, rows, model_name=args.model, data_name=args.data, max_new_tokens=args.max_new_tokens,
                      batch_size=args.batch_size, samples=args.samples, temperature=args.temperature, seed=args.seed,
                      progress=not args.no_progress)
    out = write_report(result, Path(args.output))
    print(result.table())
    print(f"wrote {out}")
    return 0
