"""Quickstart: every registered quantizer on the digits MLP, W4 per-channel / g32 / g16,
weight-only and W4A4 (dynamic), two seeds. About a minute on 2 cores.

    q4lab run experiments/quickstart.py && q4lab plot results/quickstart
"""

from q4lab.quantizers import available
from q4lab.sweep import Sweep

sweep = Sweep(
    name="quickstart",
    grid={
        "task": ["digits-mlp"],
        "quantizer": list(available()),
        "group_size": [0, 32, 16],
        "act_bits": [16, 4],
        "seed": [0, 1],
    },
)
