"""`omniopd teacher probe`: check a key and a model before spending on a run.

    omniopd teacher probe --teacher claude-haiku --prompt "What is 17*3?" --prefix "17*3 is" -n 3

prints the N continuations, the continuation mode (and whether samples are exact), the usage
and the cost. It never falls back to a local teacher: a missing or rejected key is an error
(exit 2) naming the variable to set. Every `teacher` knob is available as a flag
(`--teacher-base-url`, `--teacher-template`, `--teacher-continuation`, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from omniopd.config_flags import add_config_flags, config_from_args
from omniopd.event_loop import process_loop


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="teacher tools (probe a key and model)")
    tsub = p.add_subparsers(dest="teacher_command", required=True, metavar="TEACHER_COMMAND")
    probe = tsub.add_parser("probe", help="sample a few continuations and print mode, usage and cost",
                            description="Sample N continuations of PREFIX from the teacher and print them with the "
                            "continuation mode, token usage and cost. Never falls back to a local teacher.")
    probe.add_argument("--prompt", required=True, help="the user message")
    probe.add_argument("--prefix", default="", help="the start of the answer to continue (default: none)")
    probe.add_argument("--system", default=None, help="an optional system message")
    probe.add_argument("-n", type=int, default=1, help="number of continuations (default: 1)")
    probe.add_argument("--max-tokens", type=int, default=64, help="tokens per continuation at most (default: 64)")
    add_config_flags(probe, sections=("teacher",))
    probe.set_defaults(run=run)


def format_report(teacher, samples, identity: dict, prefix: str, totals: dict | None) -> str:
    """The text `probe` prints (a pure function of its inputs; tests check it)."""
    mode = identity.get("continuation") or identity.get("mode") or "?"
    exact = all(s.exact for s in samples) if samples else True
    model = samples[0].model if samples else ""
    lines = [f"teacher: {teacher.spec}" + (f" (model reported: {model})" if model else ""),
             f"continuation: {mode} ({'exact' if exact else 'approximate: instruction wrapper'})",
             f"samples: {len(samples)}"]
    for i, s in enumerate(samples, 1):
        lines.append(f"[{i}] finish={s.finish_reason} out={s.output_tokens:g} tok latency={s.latency_s:.2f}s")
        lines.append(f"    {prefix}\u2502{s.text}")
    tin = sum(s.input_tokens for s in samples)
    tout = sum(s.output_tokens for s in samples)
    cr = sum(s.cache_read_tokens for s in samples)
    cw = sum(s.cache_write_tokens for s in samples)
    cost = sum(s.cost_usd for s in samples)
    lines.append(f"usage: input {tin:g} tok, output {tout:g} tok, cache read {cr:g}, cache write {cw:g}")
    caps = getattr(teacher, "caps", None)
    priced = caps is None or caps.priced
    date = f" (prices of {caps.prices_date})" if caps is not None and caps.prices_date else ""
    lines.append(f"cost: ${cost:.6f}{date}" if priced else "cost: unknown (no prices for this model; reported as $0)")
    if totals and totals.get("retries"):
        lines.append(f"retries: {totals['retries']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from providers.base import Message, TeacherRequest
    from omniopd.teachers import build_teacher

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = dataclasses.replace(config_from_args(args).teacher, no_fallback=True)
    msgs = ((Message("system", args.system),) if args.system else ()) + (Message("user", args.prompt),)
    request = TeacherRequest(msgs, args.prefix, n=args.n, max_tokens=args.max_tokens, temperature=cfg.temperature)
    teacher = build_teacher(cfg)

    async def go():
        try:
            return await teacher.sample(request)
        finally:
            await teacher.aclose()

    samples = process_loop().run(go())  # the process's one event loop (omniopd/event_loop.py)
    totals = teacher.usage_totals() if hasattr(teacher, "usage_totals") else None
    print(format_report(teacher, samples, teacher.identity(), args.prefix, totals))
    return 0
