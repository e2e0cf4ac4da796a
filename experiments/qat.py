"""Quantization-aware training: how much of the W4A4 / W3A3 loss does fine-tuning recover?

Each task starts from a post-training quantized model (its row: ``training = ptq``) and is
fine-tuned with its weights and activations fake-quantized (`q4lab.qat`): ``ste`` trains the
float master weights with the post-training steps frozen, ``lsq`` also learns every step
(Esser et al., 2020). The score is the frozen model's, through the real integer path; the
row also holds the PTQ start (``ptq_score``), the training forward's score at the end
(``qat_fake_score``) and the cost (``qat_seconds_per_step``, 2 cores).

  digits-mlp, mnist1d-cnn  W4A16, W4A4 and W3A3 per-channel, min-max start, the task loss
                           (labels), seeds 0 and 1; mnist1d also 3000 steps
  charlm                   W4A4 g128, GPTQ act-order start, next-byte loss, seed 0
  minilm                   W4A4 g128, GPTQ act-order start, distillation (no labels: 1 - cosine
                           to the float embeddings, on sentences disjoint from the evaluation),
                           seed 0; also from the best post-training start of results/w4a4
                           (Hadamard rotation, MSE-clipped activation ranges), with LSQ
                           also for 500 steps at twice the rate

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
            "options": [{}, {}, {"act_order": True}, {"act_order": True}],
            "sequential": [True, True, True, False],
            "qat_batch_size": [64, 64, 16, 32],
            "qat_loss": ["task", "task", "task", "distill"],
        },
        {"bits": [4, 4, 3], "act_bits": [16, 4, 3]},
    ],
    # one PTQ row per configuration (its training fields are unused), the task's runs;
    # the transformers (minutes per run on 2 cores) at W4A4 and seed 0 only; MiniLM also from
    # the best post-training start of results/w4a4 (Hadamard rotation, MSE-clipped ranges)
    where=lambda p: (
        (
            (
                p["qat_steps"] == 0
                and p["qat_method"] == "lsq"
                and p["qat_lr"] == RUNS[p["task"]][0][1]
            )
            or (p["qat_steps"], p["qat_lr"]) in RUNS[p["task"]]
        )
        and (p["task"] in SMALL or (p["act_bits"], p["seed"]) == (4, 0))
        and (p["rotation"] == "none" or p["task"] == "minilm")
        and p["act_clipping"] == ("mse" if p["rotation"] == "hadamard" else "minmax")
        # MiniLM's longer run: LSQ from the rotated start only (about 2 s per step)
        and (
            p["task"] != "minilm"
            or p["qat_steps"] in (0, 150)
            or (p["rotation"], p["qat_method"]) == ("hadamard", "lsq")
        )
    ),
)
