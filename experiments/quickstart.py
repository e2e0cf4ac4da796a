"""Quickstart: what 2, 3 and 4 bits cost the MNIST-1D CNN, and which quantizer recovers most.

Weights at 2/3/4 bits, per-channel and g32, by min-max (round to nearest), percentile clipping
(99th), MSE-optimal clipping and GPTQ, with float activations; then the 4-bit weights with 8-
and 4-bit dynamic per-row activations. Four seeds, each its own float baseline and data split
(published in q4lab/baselines: nothing trains). About 1.5 minutes on 2 cores.

    q4lab run experiments/quickstart.py --results out && q4lab plot out/quickstart

Each seed has its own float model, so quantizers compare best by their change from it, paired
by seed: ``q4lab plot out/quickstart --y delta_score`` and ``q4lab report out/quickstart``.
"""

from q4lab.sweep import Sweep

sweep = Sweep(
    name="quickstart",
    grid={
        "task": ["mnist1d-cnn"],
        "bits": [2, 3, 4],
        "group_size": [0, 32],
        "act_bits": [16, 8, 4],
        "seed": [0, 1, 2, 3],
    },
    zipped=[
        {
            "quantizer": ["minmax", "percentile", "mse", "gptq"],
            "options": [{}, {"percentile": 99.0}, {}, {}],
        }
    ],
    where=lambda p: p["act_bits"] == 16 or p["bits"] == 4,
)
