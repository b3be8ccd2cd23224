"""A training run for the kill-and-resume test, as its own process (see test_cache_train.py).

argv: OUTPUT_DIR CACHE_PATH SERVER_URL RESUME(0/1) HANG_AT_STEP(0 = never)
At the end of step HANG_AT_STEP it tells the server to answer one more request and then hold
every other one, so the parent can kill this process mid-step with teacher requests in flight.
"""

from __future__ import annotations

import sys

import httpx
from transformers import TrainerCallback

from omniopd.config import build_config
from omniopd.train import run_train
from tests.openai_wire import CompletionsTeacher
from tests.tiny import tiny_llama, tiny_tokenizer


class HangAfterStep(TrainerCallback):
    def __init__(self, url: str, step: int):
        self.url, self.step = url, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            httpx.post(self.url + "/control", json={"hang_after": 1}).raise_for_status()


def main() -> None:
    out, cache, url, resume, hang_at = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
    cfg = build_config({
        "method": {"name": "omniopd"},
        "student": {"generations": 2, "max_new_tokens": 24},
        "teacher": {"samples": 3},
        "scheduler": {"chunk_tokens": 6, "chunks_per_completion": 2},
        "scorer": {"similarity": "edit"},
        "learner": {"max_steps": 2, "learning_rate": 5e-3, "prompts_per_step": 2, "seed": 0},
        "output": {"dir": out, "save_steps": 1, "resume": resume},
        "cache": {"path": cache},
    })
    tok = tiny_tokenizer()
    callbacks = [HangAfterStep(url, hang_at)] if hang_at else []
    result = run_train(cfg, model=tiny_llama(tok, seed=0), tokenizer=tok, teacher=CompletionsTeacher(url),
                       extra_callbacks=callbacks, echo=False)
    print(f"STEPS {result.steps}", flush=True)


if __name__ == "__main__":
    main()
