"""Bad input fails fast and small: a 60 MB single-line JSONL file and a non-UTF-8 file.

Runs the real `omniopd train --data FILE` in a subprocess for each case and prints the exit
code, the error line, wall time and the child's peak RSS; the baseline is the same command on
a small file whose first line is malformed JSON (how long `omniopd train` takes to fail at all).

    PYTHONPATH=. python bench/data_limits.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(data: Path, out: Path) -> tuple[int, str, float, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c",
           "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "sys.stderr.write(r.stderr); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)",
           sys.executable, "-m", "omniopd.cli", "train", "--data", str(data), "--output", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    err = next((x for x in r.stderr.splitlines() if "error" in x), r.stderr.strip()[-200:])
    return r.returncode, err, wall, int(r.stdout.strip().splitlines()[-1]) / 1024


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        base = t / "bad-json.jsonl"
        base.write_text("{oops\n")
        big = t / "one-60mb-line.jsonl"
        with big.open("wb") as fh:
            fh.write(b'{"question": "')
            chunk = b"x" * (1 << 20)
            for _ in range(60):
                fh.write(chunk)
            fh.write(b'"}\n')
        latin = t / "latin1.jsonl"
        latin.write_bytes(b'{"question": "2+2?"}\n' + '{"question": "caf\u00e9 au lait?"}\n'.encode("latin-1"))
        ok = True
        results = {}
        for name, f in (("baseline: malformed JSON line", base), ("60 MB single line", big), ("non-UTF-8 bytes", latin)):
            rc, err, wall, rss = run(f, t / f"out-{f.stem}")
            results[name] = wall
            written = (t / f"out-{f.stem}").exists()
            print(f"{name:<32} rc={rc}  {wall:5.2f} s  peak RSS {rss:6.0f} MB  output written: {written}\n    {err}")
            ok &= rc == 2 and not written and rss < 500 and wall < 10
        print(f"60 MB line / baseline time: {results['60 MB single line'] / results['baseline: malformed JSON line']:.2f}x; "
              f"non-UTF-8 / baseline: {results['non-UTF-8 bytes'] / results['baseline: malformed JSON line']:.2f}x")
        print("targets (DataError with file:line, < 10 s, < 500 MB, nothing written):", "met" if ok else "MISSED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
