"""Where this process stands in a multi-process run (torchrun / accelerate launch / deepspeed).

The launchers export RANK and WORLD_SIZE before our code runs, so the run can be laid out
(who prints, who records which rollouts, how replayed episodes are dealt) before accelerate is
initialised by the trainer. A plain `python` run is rank 0 of 1.
"""

from __future__ import annotations

import os


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return process_rank() == 0
