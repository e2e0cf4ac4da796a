"""W4A4 without training: what rotations, smoothing, clipping and GPTQ each buy when every linear
input is quantized to 4 bits (`q4lab.core.transforms`).

Variants (4-bit weights, g128 where a layer is wider, 4-bit activations):
  naive            min-max weights, min-max activation ranges
  clipped          activation ranges by MSE-optimal clipping (per row, or per tensor when static)
  smooth a         SmoothQuant (Xiao et al. 2023), migration strength a in {0.5, 0.8}
  hadamard         randomised Hadamard rotation of every linear input (QuaRot, Ashkboos et al.
                   2024), whole-width (384 = 12 * 32 via a Paley factor)
  gptq             GPTQ act-order weights (the post-training baseline of results/minilm)
  + gptq           the transform, then GPTQ on the transformed weight and Hessian
  hadamard + gptq + clipped   the three together
  ... + float target          and GPTQ fitting the float model's outputs from the quantized
                   model's inputs (GPTAQ, Li et al. 2025; sequential calibration on every task)
each with dynamic per-row ranges and static per-tensor ranges (calibrated), seeds 0 and 1 (the
seed also draws the rotation's signs).
Tasks: minilm (all 36 linear layers), charlm, digits-mlp; mnist1d-cnn is left out (its
convolutions take no transform).

    q4lab run experiments/w4a4.py
    q4lab plot results/w4a4 --hue rotation --columns act_mode --x bits_per_weight
    q4lab report results/w4a4 --write
"""

from q4lab.sweep import Sweep

GPTQ = {"act_order": True}
VARIANTS = {  # name: (quantizer, options, rotation, smooth_alpha, act_clipping)
    "naive": ("minmax", {}, "none", 0.0, "minmax"),
    "clipped": ("minmax", {}, "none", 0.0, "mse"),
    "smooth 0.5": ("minmax", {}, "none", 0.5, "minmax"),
    "smooth 0.8": ("minmax", {}, "none", 0.8, "minmax"),
    "hadamard": ("minmax", {}, "hadamard", 0.0, "minmax"),
    "gptq": ("gptq", GPTQ, "none", 0.0, "minmax"),
    "smooth 0.5 + gptq": ("gptq", GPTQ, "none", 0.5, "minmax"),
    "hadamard + gptq": ("gptq", GPTQ, "hadamard", 0.0, "minmax"),
    "hadamard + gptq + clipped": ("gptq", GPTQ, "hadamard", 0.0, "mse"),
    "hadamard + gptq + clipped + float target": (
        "gptq",
        GPTQ | {"float_target": True},
        "hadamard",
        0.0,
        "mse",
    ),
}
FLOAT_INPUTS = ("minilm",)  # one-shot calibration (float inputs), except for the float target

sweep = Sweep(
    name="w4a4",
    grid={
        "seed": [0, 1],
        "act_mode": ["dynamic", "static"],
        "bits": [4],
        "group_size": [128],
        "act_bits": [4],
        "task": ["minilm", "charlm", "digits-mlp"],
        "sequential": [False, True],
    },
    zipped=[
        {
            name: [v[i] for v in VARIANTS.values()]
            for i, name in enumerate(
                ["quantizer", "options", "rotation", "smooth_alpha", "act_clipping"]
            )
        },
    ],
    where=lambda p: (
        p["sequential"]
        == (p["task"] not in FLOAT_INPUTS or p["options"].get("float_target", False))
    ),
    description="W4A4 post-training: rotations, smoothing, clipping, GPTQ",
)
