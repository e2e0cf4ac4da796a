"""A byte-level GPT (4 layers, width 256, context 128) trained here on the standard library's
sources, two seeds: W8 / W4 / W3 g128 weight-only and W8A8 / W8A4 / W4A8 / W4A4 (dynamic
per-token activations), every quantizer. Metric: validation perplexity per byte (bits per byte
too).

    q4lab run experiments/charlm.py
    q4lab plot results/charlm --x bits_per_weight ideal_bits_per_weight
    q4lab report results/charlm --x ideal_bits_per_weight --write
"""

from q4lab.sweep import Sweep

sweep = Sweep(
    name="charlm",
    grid={
        "task": ["charlm"],
        "bits": [8, 4, 3],
        "group_size": [128],
        "act_bits": [16, 8, 4],
        "seed": [0, 1],
    },
    zipped=[
        {
            "quantizer": ["minmax", "percentile", "mse", "gptq", "gptq"],
            "options": [{}, {}, {}, {}, {"act_order": True}],
        }
    ],
    where=lambda p: p["act_bits"] == 16 or p["bits"] >= 4,
)
