"""Quantization-aware training: how much of the W4A4 / W3A3 loss does fine-tuning recover?

Each task starts from a post-training quantized model (its row: ``training = ptq``) and is
fine-tuned (`q4lab.qat`: the integer path's values forward, the fake-quant gradients back):
``ste`` trains the float master weights with the post-training steps frozen, ``lsq`` also
learns every step (Esser et al., 2020). The score is the frozen model's, through the real
integer path; the row also holds the PTQ start (``ptq_score``), the training forward's score at
the end (``qat_fake_score``: the same number, as freezing is exact; in 43 of the 44 trained
rows equal to the bit, in MiniLM's Hadamard LSQ 500-step row 1.2e-6 apart, relative) and the cost
(``qat_seconds_per_step``, 2 cores).

  digits-mlp, mnist1d-cnn  W4A16, W4A4 and W3A3 per-channel, min-max start, the task loss
                           (labels), seeds 0 and 1; mnist1d also 3000 steps
  charlm                   W4A4 g128, GPTQ act-order start, next-byte loss, seed 0
  minilm                   W4A4 g128, GPTQ act-order start, distillation (no labels: 1 - cosine
                           to the float embeddings, on sentences disjoint from the evaluation),
                           seed 0; also from the best post-training start of results/w4a4
                           before GPTAQ (Hadamard rotation, MSE-clipped activation ranges),
                           with LSQ also for 500 steps at twice the rate; and from that start
                           with GPTQ fitting the float model's outputs (MSE-clipped groups,
                           sequential calibration), LSQ 500 steps only

    q4lab run experiments/qat.py
    q4lab plot results/qat --hue training
    q4lab report results/qat --write
"""

from q4lab.sweep import Sweep

SMALL = ("digits-mlp", "mnist1d-cnn")
# each task's training runs, (steps, peak learning rate); the first one's rate names its PTQ row
RUNS = {
    "digits-mlp": [(1000, 3e-3)],
    "mnist1d-cnn": [(1000, 3e-3), (3000, 3e-3)],
    "charlm": [(300, 3e-4)],
    "minilm": [(150, 1e-4), (500, 2e-4)],
}
AO = {"act_order": True}
FLOAT_TARGET = AO | {"clipping": "mse", "float_target": True}
# the post-training start of each task: (quantizer options, sequential calibration)
STARTS = {
    "digits-mlp": [({}, True)],
    "mnist1d-cnn": [({}, True)],
    "charlm": [(AO, True)],
    # GPTAQ's start (float target): sequential by definition
    "minilm": [(AO, False), (FLOAT_TARGET, True)],
}


def _kept(p) -> bool:
    """One PTQ row per configuration (its training fields are unused), the task's runs; the
    transformers (minutes per run on 2 cores) at W4A4 and seed 0 only; MiniLM also from the
    best post-training starts of results/w4a4 (Hadamard rotation, MSE-clipped ranges), the
    longer run (about 2 s per step) and the float-target start with LSQ only."""
    task, run = p["task"], (p["qat_steps"], p["qat_lr"])
    ptq_row = p["qat_steps"] == 0 and p["qat_method"] == "lsq" and p["qat_lr"] == RUNS[task][0][1]
    float_target = p["options"] == FLOAT_TARGET
    return (
        (ptq_row or run in RUNS[task])
        and (p["options"], p["sequential"]) in STARTS[task]
        and (task in SMALL or (p["act_bits"], p["seed"]) == (4, 0))
        and (p["rotation"] == "none" or task == "minilm")
        and p["act_clipping"] == ("mse" if p["rotation"] == "hadamard" else "minmax")
        and (
            task != "minilm"
            or (p["qat_steps"] in (0, 150) and not float_target)
            or (
                (p["rotation"], p["qat_method"]) == ("hadamard", "lsq")
                and (not float_target or p["qat_steps"] in (0, 500))
            )
        )
    )


sweep = Sweep(
    name="qat",
    grid={
        "seed": [0, 1],
        "qat_method": ["ste", "lsq"],
        "qat_steps": [0, *sorted({steps for runs in RUNS.values() for steps, _ in runs})],
        "qat_lr": sorted({lr for runs in RUNS.values() for _, lr in runs}),
        "rotation": ["none", "hadamard"],
        "act_clipping": ["minmax", "mse"],
    },
    zipped=[
        {
            "task": ["digits-mlp", "mnist1d-cnn", "charlm", "minilm"],
            "group_size": [0, 0, 128, 128],
            "quantizer": ["minmax", "minmax", "gptq", "gptq"],
            "qat_batch_size": [64, 64, 16, 32],
            "qat_loss": ["task", "task", "task", "distill"],
        },
        {"bits": [4, 4, 3], "act_bits": [16, 4, 3]},
        {  # every start of STARTS; `_kept` pairs them with their task
            "options": [{}, AO, AO, FLOAT_TARGET],
            "sequential": [True, True, False, True],
        },
    ],
    where=_kept,
)
