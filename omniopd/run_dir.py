"""The run directory's rules: refuse to overwrite, resume from the newest checkpoint, and stop at the end.

`RunDir.open(path, resume=..., max_steps=...)` decides, reading only, before anything is
loaded or written:

- a fresh run into a directory that already holds a run (`metrics.jsonl`) is refused;
- `--resume` needs a `checkpoint-N/` to continue from (or a finished run, below);
- `--resume` of a run that already reached `--max-steps` and wrote `final/` is *finished*: it
  trains no step, asks the teacher nothing and leaves `final/` untouched; a larger
  `--max-steps` continues it from its newest checkpoint.

`create(cfg)` then makes the directory and writes `config.yaml` (the resolved config) — the
first write of a run, done only after every fail-fast check passed (`omniopd.preflight`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from omniopd.errors import ConfigError


def newest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint. transformers writes `trainer_state.json` last, so a checkpoint
    without it was cut off mid-save (the process killed, e.g. for memory) and the one before it is used."""
    cps = [p for p in output_dir.glob("checkpoint-*")
           if p.is_dir() and p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(cps, key=lambda p: int(p.name.split("-")[-1])) if cps else None


def _last_logged_step(metrics: Path) -> int:
    step = 0
    if metrics.is_file():
        with metrics.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    step = max(step, int(json.loads(line).get("step", 0)))
                except (ValueError, AttributeError):
                    continue
    return step


@dataclass(frozen=True)
class RunDir:
    """What a run may do with its directory (see the module docstring)."""

    path: Path
    resume_from: Path | None = None  # the checkpoint to continue from
    done_steps: int = 0  # optimizer steps already taken (the checkpoint's, else the metrics')
    finished: bool = False  # resumed at or past --max-steps with final/ written: nothing to do

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    @classmethod
    def open(cls, path: str | Path, *, resume: bool, max_steps: int) -> RunDir:
        out = Path(path)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output {out}: exists and is not a directory; choose another --output")
        if not resume:
            if (out / "metrics.jsonl").exists():
                raise ConfigError(f"output.dir {out} already holds a run; pass --resume to continue it "
                                  "or choose another --output")
            return cls(out)
        ckpt = newest_checkpoint(out) if out.is_dir() else None
        done = int(ckpt.name.split("-")[-1]) if ckpt else _last_logged_step(out / "metrics.jsonl")
        has_final = (out / "final").is_dir() and any((out / "final").iterdir())
        if has_final and done >= max_steps:
            return cls(out, ckpt, done, finished=True)
        if ckpt is None:
            hint = (f"the run finished at step {done} and saved final/ only (output.save_steps 0); "
                    "start a new run from it with --student " + str(out)) if has_final else "start without --resume"
            raise ConfigError(f"--resume: no checkpoint-* directory in {out}; {hint}")
        return cls(out, ckpt, done)

    def create(self, cfg) -> None:
        """Make the directory and write the resolved config (`config.yaml`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg.save_yaml(self.path / "config.yaml")
