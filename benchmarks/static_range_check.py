"""How close a static min-max activation range comes to the range of what each layer quantizes.

For each variant (a rotation, smoothing, or none) of a W4 g128 A4 static min-max recipe, every
calibration row of every hooked layer is captured from the float model, transformed as the
quantized layer transforms it, and its largest |value| compared with the layer's static range
(``scale * qmax``). A ratio of 1 is an exact min-max range; below 1 the range clips.

    python benchmarks/static_range_check.py --task minilm --seed 0
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from q4lab.adapters import adapt, get_at
from q4lab.hooks import InputsHook
from q4lab.quantize_model import quantize_model
from q4lab.sweep.fields import recipe_of, with_defaults
from q4lab.tasks import get_task

VARIANTS = {  # name: (rotation, smooth_alpha)
    "none": ("none", 0.0),
    "hadamard": ("hadamard", 0.0),
    "smooth 0.5": ("none", 0.5),
    "smooth 0.8": ("none", 0.8),
}


def calibration_rows(task, params, seed: int) -> dict[str, np.ndarray]:
    """Every calibration input row of each hooked layer, from the float model."""
    adapter = adapt(task.model, params)
    paths = [
        layer.path for layer in adapter.layers(params, task.sample_input(seed)) if layer.hookable
    ]

    @jax.jit
    def rows(p, x):
        hooks = {path: InputsHook() for path in paths}
        adapter.apply(p, x, hooks)
        return {path: jnp.concatenate(h.rows) for path, h in hooks.items()}

    out: dict[str, list[np.ndarray]] = {path: [] for path in paths}
    for batch in task.calibration(seed):
        for path, r in rows(params, batch).items():
            out[path].append(np.asarray(r))
    return {path: np.concatenate(r) for path, r in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="minilm")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task = get_task(args.task)
    params = task.baseline(args.seed)
    rows = calibration_rows(task, params, args.seed)
    table = []
    for name, (rotation, alpha) in VARIANTS.items():
        point = {
            "task": args.task,
            "seed": args.seed,
            "bits": 4,
            "group_size": 128,
            "act_bits": 4,
            "act_mode": "static",
            "act_clipping": "minmax",
            "rotation": rotation,
            "smooth_alpha": alpha,
            "sequential": False,  # ranges of the float model's inputs, as the rows here
        }
        recipe = recipe_of(with_defaults(point))
        qm = quantize_model(
            task.model,
            params,
            recipe,
            sample_input=task.sample_input(args.seed),
            calibration=task.calibration(args.seed),
        )
        ratios = []
        for path, state in qm.acts.items():
            qt = get_at(qm.params, qm.layers[path].layer.key)
            seen = (
                rows[path] if qt.transform is None else qt.transform.apply(jnp.asarray(rows[path]))
            )
            qmax = state.spec.quant_spec().qmax
            ratios.append(float(state.scale.ravel()[0]) * qmax / float(np.abs(seen).max()))
        ratios = np.asarray(ratios)
        table.append(
            {
                "variant": name,
                "layers": len(ratios),
                "min ratio": ratios.min(),
                "median ratio": np.median(ratios),
                "layers below 0.99": int((ratios < 0.99).sum()),
            }
        )
    print(pd.DataFrame(table).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
