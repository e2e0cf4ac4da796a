"""Published float baselines: the parameter files the results tables were computed from.

`q4lab.tasks` reads them before its cache and before training (see `q4lab.tasks.base`).
``python -m q4lab.baselines publish --task digits-mlp --seeds 0 1 2 3 4`` (re)trains and writes
them; ``python -m q4lab.baselines check [--retrain]`` verifies their checksums and, with
``--retrain``, whether training on this machine reproduces them bit for bit.
"""

from q4lab.baselines.store import (
    PUBLISHED_DIR,
    ChecksumError,
    params_from_bytes,
    params_to_bytes,
    published_dir,
    read_index,
)

__all__ = [
    "PUBLISHED_DIR",
    "ChecksumError",
    "params_from_bytes",
    "params_to_bytes",
    "published_dir",
    "read_index",
]
