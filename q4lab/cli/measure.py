"""The commands that quantize and measure in one go: ``demo``, ``quantize``, ``layer-error`` and
``sensitivity``, and the recipe flags that the last three take (one per sweep field)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Any


def _cmd_demo(args: argparse.Namespace) -> int:
    from q4lab.demo import compare_quantizers, synthetic_weights

    table = compare_quantizers(synthetic_weights(args.k, args.n, args.seed))
    print(
        f"Reconstruction of synthetic {args.k}x{args.n} weights by every registered quantizer "
        "(rel_sq_error = ||W - W_hat||^2 / ||W||^2; bits from the size ledger)\n"
    )
    print(table.to_markdown(index=False, floatfmt=".4g"))
    return 0


SHOWN = [
    "config_hash",
    "task",
    "seed",
    "quantizer",
    "bits",
    "group_size",
    "act_bits",
    "act_mode",
    "metric",
    "fp_score",
    "score",
    "delta_score",
    "bits_per_weight",
    "ideal_bits_per_weight",
    "compression",
    "fake_rel_diff",
    "fake_rel_diff_max",
    "fake_agreement",
]


def _add_recipe_flags(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """One flag per sweep field (`q4lab ls`), each taking one or more values; every combination
    is a point. Values are Python literals (``true``/``false`` accepted), e.g. ``--options
    "{'act_order': True}"``; ``--quantizer gptq:act_order=true`` sets the options too.
    ``defaults``: a command's own default for a field (its help says so)."""
    from q4lab.recipe import literal_value
    from q4lab.sweep.fields import FIELDS

    defaults = {"task": "digits-mlp", **defaults}
    for name, (default, meaning) in FIELDS.items():
        if name == "task":
            meaning = "registered task name(s)"
        default = defaults.get(name, default)
        flags = [f"--{name.replace('_', '-')}"]
        if name == "group_size":
            flags.append("--group")
        parser.add_argument(
            *flags,
            dest=name,
            nargs="+",
            type=str if name in ("task", "quantizer") else literal_value,
            default=[defaults[name]] if name in defaults else None,
            help=f"{meaning} (default {default!r})",
        )
    parser.add_argument("--asym", action="store_true", help="asymmetric weights: --symmetric false")
    parser.add_argument(
        "--float-inputs",
        action="store_true",
        help="calibrate every layer on the float model's activations: --sequential false",
    )


def _points(args: argparse.Namespace) -> list[dict]:
    """The sweep points of every combination of the field flags, in flag order, validated with
    the sweep's own codec (`q4lab.sweep.fields`): a command line and an experiment file given
    the same fields make the same recipe, config hash and row."""
    import itertools

    from q4lab.recipe import parse_quantizer
    from q4lab.sweep.experiment import describe_point
    from q4lab.sweep.fields import FIELDS, validate_point, with_defaults

    axes = [
        [(name, value) for value in getattr(args, name)]
        for name in FIELDS
        if getattr(args, name, None) is not None
    ]
    if args.float_inputs and True in (getattr(args, "sequential", None) or []):
        raise ValueError("--float-inputs and --sequential true contradict; allowed: one of them")
    points = []
    for combo in itertools.product(*axes):
        point = dict(combo)
        if args.asym:
            point["symmetric"] = False
        if args.float_inputs:
            point["sequential"] = False
        if isinstance(point.get("quantizer"), str):
            point["quantizer"], options = parse_quantizer(point["quantizer"])
            if isinstance(point.get("options", {}), dict):  # else validate_point names it
                point["options"] = {**point.get("options", {}), **options}
        point = with_defaults(point)
        try:
            validate_point(point)
        except ValueError as err:  # one combination of the flags: name it
            raise ValueError(f"the point {describe_point(point)}: {err}") from None
        points.append(point)
    return points


def _cmd_quantize(args: argparse.Namespace) -> int:
    import pandas as pd

    from q4lab.sweep.fields import FIELDS
    from q4lab.sweep.runner import evaluate_point, point_row

    points = _points(args)  # validated before any task runs
    rows = [point_row(p, evaluate_point(p, progress=None)) for p in points]  # a bar on a terminal
    # the fields a flag set, beside the weight fields: rows that differ show how
    given = [
        name
        for name, (default, _) in FIELDS.items()
        if name not in SHOWN and any(repr(p[name]) != repr(default) for p in points)
    ]
    at = SHOWN.index("act_bits")
    table = pd.DataFrame(rows)[[*SHOWN[:at], *given, *SHOWN[at:]]]
    print(table.to_markdown(index=False, floatfmt=".4g"))
    return 0


def _cmd_layer_error(args: argparse.Namespace) -> int:
    import pandas as pd

    from q4lab.sensitivity import layer_errors
    from q4lab.sweep.fields import FIELDS, recipe_of

    used = ("task", "seed", "quantizer", "options", "bits", "symmetric", "symmetric_grid")
    used += ("zero_point", "group_size", "scale_dtype", "sequential", "rules", "calib_padding")
    ignored = [n for n, v in vars(args).items() if v is not None and n in FIELDS and n not in used]
    if ignored:  # activations, transforms, training, budgets: not what this table measures
        flags = ", ".join(f"--{n.replace('_', '-')}" for n in used)
        raise ValueError(
            f"--{ignored[0].replace('_', '-')} is not used: layer-error measures each layer's "
            f"quantized weights alone; allowed: {flags}"
        )
    points = _points(args)
    # a column per configuration: the quantizer, and the other fields given several values
    labelled = ("symmetric", "symmetric_grid", "zero_point", "scale_dtype", "sequential", "rules")
    labelled += ("calib_padding",)
    varied = [n for n in labelled if len({repr(p[n]) for p in points}) > 1]
    runs = {(p["task"], p["seed"], p["calib_padding"]): [] for p in points}  # first-seen order
    for p in points:
        runs[p["task"], p["seed"], p["calib_padding"]].append(p)
    rows = []
    for (task, seed, padding), run in runs.items():
        recipes = [recipe_of(p) for p in run]
        for row in layer_errors(task, recipes, seed, calib_padding=padding):
            point = run[row["recipe_index"]]
            row["quantizer"] = " ".join([row["quantizer"], *(f"{n}={point[n]}" for n in varied)])
            rows.append(row)
    index = ["task", "seed", "layer", "k", "n", "bits", "group_size"]
    frame = pd.DataFrame(rows).drop_duplicates([*index, "quantizer"])  # a point given twice
    table = frame.pivot_table(  # one value per cell: the index and columns name each point
        index=index, columns="quantizer", values="relative_error", aggfunc="first", sort=False
    )
    base = table[table.columns[0]]  # the first --quantizer (columns keep the order of appearance)
    for col in [c for c in table.columns if c != base.name]:
        table[f"{col} / {base.name}"] = table[col] / base
    print(
        "Relative output error ||X (W - W_hat)||^2 / ||X W||^2 per layer on the calibration split, "
        "X the float model's inputs to the layer, rows that hold data only (a task's row mask: "
        "not padding); the weights were quantized from the float model's inputs unless "
        "--sequential true, calibrated on padding too unless --calib-padding exclude\n"
    )
    print(table.reset_index().to_markdown(index=False, floatfmt=".4g"))
    return 0


# the fields a sensitivity file's name spells out (the others are hashed into it)
_SENSITIVITY_NAMED = (
    "task",
    "seed",
    "quantizer",
    "options",
    "bits",
    "symmetric",
    "group_size",
    "scale_dtype",
    "budget_widths",
    "budget_groups",
)


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    import pandas as pd

    from q4lab.core.spec import group_label
    from q4lab.plot_sensitivity import save_heatmap, sensitivity_table
    from q4lab.sweep import recipe_of
    from q4lab.sweep.fields import FIELDS
    from q4lab.sweep.mixed import sensitivity_rows

    configs: dict[str, dict] = {}  # the points of each configuration but its width and group
    for p in _points(args):
        key = repr({k: v for k, v in p.items() if k not in ("bits", "group_size")})
        config = configs.setdefault(key, {**p, "budget_widths": [], "budget_groups": []})
        for field, value in (("budget_widths", p["bits"]), ("budget_groups", p["group_size"])):
            if value not in config[field]:
                config[field].append(value)
    for point in configs.values():
        if len(point["budget_groups"]) == 1:  # one group size: candidates named by width
            point["budget_groups"] = []
        rows = sensitivity_rows(point, progress=None)  # cached: a rerun only prints
        quantizer = recipe_of(point).base.quantizer_label()  # "gptq(act_order=True)"
        # files per quantizer and options: another quantizer's run beside it keeps its own
        tag = re.sub(r"[^\w=.-]+", "-", quantizer.replace("'", "")).strip("-")
        # and per weight spec: a run at another group size or symmetry keeps its own too
        groups = point["budget_groups"] or [point["group_size"]]
        spec = ["sym" if point["symmetric"] else "asym", *(f"g{g}" if g else "pc" for g in groups)]
        if point["scale_dtype"] != "float16":
            spec.append(point["scale_dtype"])
        stem = f"{point['task']}-seed{point['seed']}-{tag}-sensitivity-{'-'.join(spec)}"
        weights = "symmetric" if point["symmetric"] else "asymmetric"
        if not point["budget_groups"]:  # else each candidate names its group
            weights += f", {group_label(point['group_size'])}"
        # any other field off its default (calibration, a rotation, ...): named, and hashed
        # into the file name, so that a run of another setting keeps its own files
        other = {
            k: v
            for k, v in point.items()
            if k in FIELDS and k not in _SENSITIVITY_NAMED and v != FIELDS[k][0]
        }
        if other:
            digest = hashlib.sha256(json.dumps(other, sort_keys=True, default=str).encode())
            stem += f"-{digest.hexdigest()[:8]}"
            weights += "".join(f", {k}={v}" for k, v in other.items())
        frame = pd.DataFrame(rows).assign(quantizer=quantizer, weights=weights)
        directory = Path(args.out)
        directory.mkdir(parents=True, exist_ok=True)
        frame.to_csv(directory / f"{stem}.csv", index=False)
        paths = save_heatmap(frame, directory, stem)
        stored = sensitivity_table(frame, "stored_bytes").round().astype("Int64")  # not 1.2e+04
        table = sensitivity_table(frame).join(stored.add_suffix(" bytes"))
        print(
            f"{point['task']} seed {point['seed']}: {frame['loss_kind'].iloc[0]}, with only one "
            "layer quantized at each width (and its stored bytes)\n"
        )
        print(table.reset_index().to_markdown(index=False, floatfmt=".4g"))
        print(f"\nwritten: {directory / (stem + '.csv')}, {paths[0]}\n")
    return 0
