"""The digits MLP across bit widths: every quantizer (GPTQ with and without act-order) at
W2/W3/W4/W8, per-channel and g16, weight-only, plus W4A8 / W4A4 / W8A8 / W8A4 (dynamic),
three seeds.

    q4lab run experiments/digits.py
    q4lab plot results/digits --x bits_per_weight ideal_bits_per_weight
    q4lab report results/digits --x ideal_bits_per_weight --write
"""

from q4lab.sweep import Sweep

sweep = Sweep(
    name="digits",
    grid={
        "task": ["digits-mlp"],
        "bits": [2, 3, 4, 8],
        "group_size": [0, 16],
        "act_bits": [16, 8, 4],
        "seed": [0, 1, 2],
    },
    zipped=[
        {
            "quantizer": ["minmax", "percentile", "mse", "gptq", "gptq"],
            "options": [{}, {}, {}, {}, {"act_order": True}],
        }
    ],
    where=lambda p: p["act_bits"] == 16 or p["bits"] >= 4,
)
