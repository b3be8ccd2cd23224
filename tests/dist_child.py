"""One rank of a multi-process training run on tiny models (see tests/test_multiprocess.py).

Launched by `torchrun --nproc_per_node N tests/dist_child.py CONFIG_JSON`: every rank builds the
same seeded tiny student, teacher and tokenizer in-process and calls the real `run_train`.
CONFIG_JSON holds `build_config` overrides (dotted keys).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omniopd.config import build_config  # noqa: E402
from omniopd.train import run_train  # noqa: E402
from providers.local import LocalTeacher  # noqa: E402
from tests.tiny import tiny_llama, tiny_tokenizer  # noqa: E402


def main() -> None:
    overrides = json.loads(sys.argv[1])
    tok = tiny_tokenizer()
    student = tiny_llama(tok, seed=0)
    # an API teacher named in the overrides is built by run_train itself (the SDKs read the env)
    api = not str(overrides.get("teacher.spec", "local:")).startswith("local:")
    teacher = None if api else LocalTeacher(tiny_llama(tok, seed=1), tok, spec="local:tiny-teacher")
    run_train(build_config(None, overrides), model=student, tokenizer=tok, teacher=teacher, echo=True)


if __name__ == "__main__":
    main()
