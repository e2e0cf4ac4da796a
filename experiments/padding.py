"""MiniLM calibrated with and without its [PAD] positions (`calib_padding`).

MiniLM's calibration batches are padded to a multiple of 16 tokens: a third of the token rows of
the 1,024 calibration sentences are [PAD] (8,984 of 27,648 for seed 0), which the model masks out
of attention and pooling. With ``calib_padding="include"`` (the default, and every published
MiniLM row) they enter every calibration statistic; ``"exclude"`` counts only the rows that hold
tokens (`Task.row_mask`). Variants (all 36 linear layers; one-shot calibration on float inputs):
  GPTQ W4 g128 / W3 per-channel / W3 g128   act-order with MSE clipping (results/minilm's best)
  W4A4 static min-max                        static per-tensor activation ranges (results/w4a4)
  W4A4 static Hadamard + GPTQ                the same after a Hadamard rotation, GPTQ weights
  W4A4 dynamic SmoothQuant 0.5               channel maxima from calibration
seeds 0 and 1 (the seed draws the calibration sentences and the rotation's signs).

    q4lab run experiments/padding.py
    q4lab plot results/padding --hue calib_padding --x bits_per_weight
    q4lab report results/padding --compare calib_padding --write
"""

from q4lab.sweep import Sweep

GPTQ = {"act_order": True, "clipping": "mse"}
VARIANTS = {  # name: (quantizer, options, bits, group_size, act_bits, act_mode, rotation, smooth)
    "gptq W4 g128": ("gptq", GPTQ, 4, 128, 16, "dynamic", "none", 0.0),
    "gptq W3": ("gptq", GPTQ, 3, 0, 16, "dynamic", "none", 0.0),
    "gptq W3 g128": ("gptq", GPTQ, 3, 128, 16, "dynamic", "none", 0.0),
    "W4A4 static": ("minmax", {}, 4, 128, 4, "static", "none", 0.0),
    "W4A4 static hadamard + gptq": (
        "gptq",
        {"act_order": True},
        4,
        128,
        4,
        "static",
        "hadamard",
        0.0,
    ),
    "W4A4 smooth 0.5": ("minmax", {}, 4, 128, 4, "dynamic", "none", 0.5),
}
FIELDS = ("quantizer", "options", "bits", "group_size", "act_bits", "act_mode", "rotation")

sweep = Sweep(
    name="padding",
    grid={
        "task": ["minilm"],
        "seed": [0, 1],
        "sequential": [False],
        "calib_padding": ["include", "exclude"],
    },
    zipped=[
        {
            name: [v[i] for v in VARIANTS.values()]
            for i, name in enumerate((*FIELDS, "smooth_alpha"))
        }
    ],
    description="MiniLM: calibration statistics with and without the [PAD] positions",
)
