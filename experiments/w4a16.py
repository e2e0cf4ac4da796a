"""Weight-only INT4 and INT3 on the transformers: round to nearest, clipping, GPTQ and AWQ.

  minmax, mse                  round to nearest over the full / the MSE-optimal range
  gptq act-order (+ mse)       GPTQ with act-order (and MSE-clipped group ranges)
  awq                          activation-aware channel scales searched on the output error
                               (Lin et al. 2024), round to nearest; + mse: clipped ranges
  awq + gptq                   AWQ's scales, then GPTQ act-order on the scaled weight
  hadamard + gptq act-order + mse   the weight rotated first (its outliers spread, as in QuaRot),
                               with symmetric codes and with a zero point (asymmetric)
  ... + float target           the last, GPTQ fitting the float model's outputs from the
                               quantized model's inputs (GPTAQ, Li et al. 2025; sequential)
  hqq, minmax asymmetric       HQQ's fitted real-valued zero points (Badri & Shaji 2023; no
                               calibration), beside round to nearest with an integer zero point
                               and with min-max's real-valued one (zero_point float: what the
                               float zero is worth without HQQ's fit)

at 4 and 3 bits, per-channel and g128, on minilm (36 linear layers, float calibration inputs
except for the float target) and charlm (sequential calibration), seed 0. AWQ's channel scales
are stored (float32, one per input channel) and counted in bits_per_weight.

    q4lab run experiments/w4a16.py
    q4lab plot results/w4a16 --x bits_per_weight
    q4lab report results/w4a16 --write
"""

from q4lab.sweep import Sweep

AO = {"act_order": True}
sweep = Sweep(
    name="w4a16",
    grid={
        "bits": [4, 3],
        "group_size": [0, 128],
        "task": ["minilm", "charlm"],
        "sequential": [False, True],
    },
    zipped=[
        {
            "quantizer": ["minmax", "mse", "gptq", "gptq", "awq", "awq", "awq"]
            + ["gptq"] * 3
            + ["hqq", "minmax", "minmax"],
            "options": [
                {},
                {},
                AO,
                AO | {"clipping": "mse"},
                {},
                {"quantizer": "mse"},
                {"quantizer": "gptq", "quantizer_options": AO},
                AO | {"clipping": "mse"},
                AO | {"clipping": "mse"},
                AO | {"clipping": "mse", "float_target": True},
                {},
                {},
                {},
            ],
            "rotation": ["none"] * 7 + ["hadamard"] * 3 + ["none"] * 3,
            "symmetric": [True] * 8 + [False] * 5,
            "zero_point": ["auto"] * 12 + ["float"],
        },
    ],
    # minilm calibrates on float inputs (one shot), charlm sequentially; the float target is
    # sequential by definition
    where=lambda p: (
        p["sequential"] == (p["task"] == "charlm" or p["options"].get("float_target", False))
    ),
    description="weight-only W4/W3: round to nearest, clipping, GPTQ, AWQ, HQQ",
)
