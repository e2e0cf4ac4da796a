"""How far the QAT training forward at step 0 is from the post-training integer forward it
starts from (README, "One home for the quantized layer").

Each layer's values are the integer path's in both; the two graphs around them differ (the
training one carries the float simulation for its gradients), and XLA may fuse their float
epilogues (scales, biases) otherwise. A difference of an ulp can then move an activation code
downstream. Prints, per recipe and batch size M, the largest absolute difference of the
outputs, that relative to the largest output, and how many argmax predictions differ.

    python benchmarks/qat_start.py                    # digits-mlp, seed 0
    python benchmarks/qat_start.py --task mnist1d-cnn
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import pandas as pd

import q4lab
from q4lab import ActSpec, QuantSpec, Recipe
from q4lab.qat import QATModel
from q4lab.tasks import get_task

RECIPES = {
    "W4A4 per-channel, min-max": ("minmax", QuantSpec(), ActSpec()),
    "W4A8 per-channel, min-max": ("minmax", QuantSpec(), ActSpec(bits=8)),
    "W4A4 g16, min-max": ("minmax", QuantSpec(group_size=16), ActSpec()),
    "W4A8 per-channel, GPTQ": ("gptq", QuantSpec(), ActSpec(bits=8)),
    "W4A16 per-channel, min-max": ("minmax", QuantSpec(), None),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits-mlp")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task = get_task(args.task)
    params, x = task.baseline(args.seed), jnp.asarray(task.test_inputs(args.seed))
    rows = []
    for name, (quantizer, weight, act) in RECIPES.items():
        recipe = Recipe.single(quantizer=quantizer, weight=weight, act=act)
        qm = q4lab.quantize_model(
            task.model, params, recipe, sample_input=x[:2], calibration=task.calibration(args.seed)
        )
        qat, state = QATModel.start(qm, method="ste")
        for m in (1, 8, 64, len(x)):
            ptq, start = np.asarray(qm.apply(x[:m])), np.asarray(qat.apply(state, x[:m]))
            diff = float(np.abs(ptq - start).max())
            flips = int((ptq.argmax(-1) != start.argmax(-1)).sum())
            rows.append(
                {
                    "recipe": name,
                    "M": m,
                    "max |PTQ - QAT start|": diff,
                    "relative": diff / float(np.abs(ptq).max()),
                    "argmax differs": flips,
                }
            )
    print(f"{args.task} seed {args.seed}: the PTQ integer forward against QAT's at step 0\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2g"))


if __name__ == "__main__":
    main()
