"""How fast `omniopd train` reports a mistake, against `omniopd train --help` in the same run.

Each case runs the real console entry point in a fresh interpreter with no API keys set and
prints the exit code, wall time, the ratio to the `--help` baseline, whether anything was
written to `--output`, and the error line. Target: under 3 s to the error, nothing written.

    PYTHONPATH=. python bench/fail_fast.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GOOGLE_API_KEY", "GEMINI_API_KEY")


def timed(argv: list[str]) -> tuple[int, float, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "omniopd.cli", *argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return r.returncode, wall, (r.stderr.strip().splitlines() or [""])[-1][:150]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "bad.jsonl").write_text('{"question": "1+1?"}\n{oops\n')
        _, base, _ = timed(["train", "--help"])
        cases = {
            "no ANTHROPIC_API_KEY": ["--teacher", "claude-haiku"],
            "teacher typo (gpt5)": ["--teacher", "gpt5"],
            "flag prefix (--max-step 2)": ["--max-step", "2"],
            "report_to typo": ["--report-to", "tensorbord"],
            "report_to not installed": ["--report-to", "wandb"],
            "malformed data line": ["--data", str(t / "bad.jsonl")],
            "hub dataset offline": ["--data", "openai/gsm8k", "--data-config", "main"],
        }
        print(f"baseline `omniopd train --help`: {base:.2f} s")
        ok = True
        for i, (name, argv) in enumerate(cases.items()):
            out = t / f"run{i}"
            rc, wall, err = timed(["train", *argv, "--output", str(out)])
            written = out.exists()
            ok &= rc == 2 and wall < 3 and not written
            print(f"{name:<28} rc={rc} {wall:5.2f} s ({wall / base:4.1f}x help) written={written}  {err}")
        print("target (exit 2, < 3 s, nothing written):", "met" if ok else "MISSED")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
