"""Mixed precision by measured sensitivity against uniform widths, weight-only.

Every point quantizes with GPTQ act-order + MSE-clipped group ranges (the best uniform recipe of
results/w4a16 before GPTAQ, which fits each layer to the float model's outputs). Uniform: 2, 3
and 4 bits at g128, g64 and g32 (codes packed at their width: a 3-bit g128 layer stores 3 bits
per weight plus its scales and act-order permutation). Mixed:
each layer's width in {2, 3, 4} (g128) allocated by an exact knapsack under an average of 2.5,
3.0, 3.5 and 4.0 stored bits per quantized weight, from each layer's measured loss when only it
is quantized (`q4lab sensitivity`: the task's distillation loss on the calibration split, 1 - cos
to the float embeddings for MiniLM, KL to the float next-byte distribution for charlm; cached
and shared by the budgets); and
each layer's width and group size in {2, 3, 4} x {per-channel, g32, g128} under the same budgets.

    q4lab run experiments/mixed.py
    q4lab sensitivity --task minilm --bits 2 3 4 --group-size 128 \
        --quantizer "gptq:act_order=true,clipping=mse" --out results/mixed
    q4lab sensitivity --task minilm --bits 2 3 4 --group-size 0 32 128 \
        --quantizer "gptq:act_order=true,clipping=mse" --out results/mixed
    (the same two with --task charlm)
    q4lab plot results/mixed --hue allocation --style budget_groups --x bits_per_weight
    q4lab report results/mixed --write
"""

from q4lab.sweep import Sweep

GPTQ = {"act_order": True, "clipping": "mse"}
sweep = Sweep(
    name="mixed",
    grid={"quantizer": ["gptq"], "options": [GPTQ]},
    zipped=[
        {"task": ["minilm", "charlm"], "sequential": [False, True]},
        {
            "bits": [2, 3, 4] * 3 + [3] * 8,
            "group_size": [128] * 3 + [64] * 3 + [32] * 3 + [128] * 8,
            "bits_budget": [0.0] * 9 + [2.5, 3.0, 3.5, 4.0] * 2,
            "budget_groups": [[]] * 13 + [[0, 32, 128]] * 4,
        },
    ],
    description="mixed precision by sensitivity vs uniform widths (weight-only, GPTQ)",
)
