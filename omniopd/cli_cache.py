"""`omniopd cache stats|verify|export|import|prune|migrate`: look after the teacher-sample cache.

Every subcommand takes the cache path (default: the user-level cache that `omniopd train`
uses); a run's `episodes.sqlite` is a cache too and works the same way. Reading commands open
the file read-only; `import`, `prune` and `migrate` write, each in transactions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from cache.jsonl import export_jsonl, import_jsonl
from cache.paths import resolve_cache_path
from cache.store import SampleStore, verify_file
from omniopd.errors import CacheError, DataError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cache", help="inspect, check, move and prune the teacher-sample cache", description=__doc__)
    sub = parser.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    path_help = "cache file (default: the user-level cache, $OMNIOPD_CACHE_DIR or ~/.cache/omniopd/teacher.sqlite)"

    p = sub.add_parser("stats", help="counts, size, recorded spend and hit rate")
    p.add_argument("path", nargs="?", help=path_help)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")

    p = sub.add_parser("verify", help="SQLite integrity check plus schema and reference checks (exit 1 on problems)")
    p.add_argument("path", nargs="?", help=path_help)

    p = sub.add_parser("export", help="write every sample as JSON Lines (to move them to another machine)")
    p.add_argument("path", nargs="?", help=path_help)
    p.add_argument("-o", "--output", default="-", help="output file ('-' = stdout)")

    p = sub.add_parser("import", help="add samples from JSON Lines made by `export` (samples already present are skipped)")
    p.add_argument("files", nargs="+", help="JSONL files ('-' = stdin)")
    p.add_argument("--cache", dest="path", default=None, help=path_help)

    p = sub.add_parser("prune", help="delete samples by age and/or model")
    p.add_argument("path", nargs="?", help=path_help)
    p.add_argument("--older-than", type=float, metavar="DAYS", help="delete samples stored more than DAYS days ago")
    p.add_argument("--model", help="delete samples of this model (as the provider reported it)")
    p.add_argument("--teacher", help="delete samples produced by this teacher spec (e.g. local:smollm2)")
    p.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    p.add_argument("--vacuum", action="store_true", help="compact the file afterwards (rewrites it; needs free space)")

    p = sub.add_parser("migrate", help="bring an older cache file to this omniopd's schema version")
    p.add_argument("path", nargs="?", help=path_help)

    parser.set_defaults(run=run)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _stats(store: SampleStore, as_json: bool) -> int:
    s = store.stats()
    if as_json:
        print(json.dumps(s, indent=2))
        return 0
    hit = "-" if s["hit_rate"] is None else f"{100 * s['hit_rate']:.1f}% ({s['from_cache']} of {s['requested']} samples served from cache)"
    print(f"cache       {s['path']} (schema {s['schema_version']})")
    print(f"samples     {s['samples']} in {s['keys']} pools")
    print(f"size        {s['file_bytes'] / 1e6:.2f} MB" + (f", {s['bytes_per_sample']:.0f} bytes/sample" if s["samples"] else ""))
    print(f"spend       ${s['cost_usd']:.4f} recorded ({s['input_tokens']:.0f} input, {s['output_tokens']:.0f} output tokens)")
    print(f"hit rate    {hit}")
    if s["misses"]:
        print(f"misses      {s['misses']} samples asked for in replay/read-only mode were not stored")
    print(f"stored      {_when(s['oldest'])} .. {_when(s['newest'])}")
    print(f"episodes    {s['episodes']} in {s['runs']} runs")
    for o in s["by_origin"]:
        approx = f", {o['approximate']:.0f} approximate" if o["approximate"] else ""
        print(f"  {o['teacher'] or '?'} [{o['model'] or '?'}]: {o['samples']} samples, ${o['cost_usd']:.4f}{approx}")
    return 0


def run(args: argparse.Namespace) -> int:
    path = resolve_cache_path(args.path)
    action = args.cache_command
    if action in ("stats", "verify", "export") and not path.is_file():
        raise CacheError(f"no cache at {path}; pass the cache file (omniopd cache {action} PATH)")
    if action == "stats":
        with SampleStore(path, "read-only", creates_nothing=True) as store:
            return _stats(store, args.json)
    if action == "verify":
        problems = verify_file(path)
        for p in problems:
            print(f"problem: {p}")
        print(f"{path}: {'ok' if not problems else f'{len(problems)} problems; export what is readable and start a fresh cache'}")
        return 1 if problems else 0
    if action == "export":
        with SampleStore(path, "read-only", creates_nothing=True) as store:
            if args.output == "-":
                n = export_jsonl(store, sys.stdout)
            else:
                with open(args.output, "w", encoding="utf-8") as out:
                    n = export_jsonl(store, out)
        print(f"exported {n} samples from {path}", file=sys.stderr)
        return 0
    if action == "import":
        with SampleStore(path, "read-write") as store:
            for name in args.files:
                if name == "-":
                    added, present = import_jsonl(store, sys.stdin, "<stdin>")
                else:
                    if not Path(name).is_file():
                        raise DataError(f"{name}: no such file")
                    with open(name, encoding="utf-8") as fh:
                        added, present = import_jsonl(store, fh, name)
                print(f"{name}: added {added} samples, {present} already present")
        return 0
    if action == "prune":
        before = None if args.older_than is None else time.time() - args.older_than * 86400
        with SampleStore(path, "read-write") as store:
            n = store.delete(before=before, model=args.model, teacher=args.teacher, dry_run=args.dry_run)
            print(f"{'would delete' if args.dry_run else 'deleted'} {n} samples from {path}")
            if args.vacuum and not args.dry_run:
                store.vacuum()
        return 0
    if action == "migrate":
        with SampleStore(path, "read-write") as store:
            print(f"{store.path}: schema version {store.stats()['schema_version']}")
        return 0
    raise CacheError(f"unknown cache action {action}")  # argparse prevents this
