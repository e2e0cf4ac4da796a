"""The ``q4lab`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


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


def _recipes(args: argparse.Namespace):
    """The recipes of every combination of the recipe flags, in flag order."""
    import itertools

    from q4lab.core import QuantSpec
    from q4lab.recipe import ActSpec, Recipe, parse_quantizer

    for quantizer, bits, group, act_bits in itertools.product(
        args.quantizer, args.bits, args.group, args.act_bits
    ):
        weight = QuantSpec(
            bits=bits,
            symmetric=not args.asym,
            group_size=group or None,
            scale_dtype=args.scale_dtype,
        )
        act = None
        if act_bits < 16:
            gran = "per_row" if args.act_mode == "dynamic" else "per_tensor"
            act = ActSpec(bits=act_bits, mode=args.act_mode, granularity=gran)
        name, options = parse_quantizer(quantizer)
        yield Recipe.single(
            quantizer=name,
            options=options,
            weight=weight,
            act=act,
            sequential=not args.float_inputs,
        )


def _cmd_quantize(args: argparse.Namespace) -> int:
    import pandas as pd

    from q4lab.evaluate import evaluate

    recipes = list(_recipes(args))  # validated before any task runs
    rows = [
        evaluate(task, recipe, seed, progress=None)  # a bar over layers on a terminal
        for task in args.task
        for seed in args.seed
        for recipe in recipes
    ]
    print(pd.DataFrame(rows)[SHOWN].to_markdown(index=False, floatfmt=".4g"))
    return 0


def _cmd_layer_error(args: argparse.Namespace) -> int:
    import pandas as pd

    from q4lab.sensitivity import layer_errors

    recipes = list(_recipes(args))
    rows = [
        row for task in args.task for seed in args.seed for row in layer_errors(task, recipes, seed)
    ]
    table = pd.DataFrame(rows).pivot_table(
        index=["task", "layer", "k", "n", "bits", "group_size"],
        columns="quantizer",
        values="relative_error",
        sort=False,
    )
    base = table[table.columns[0]]  # the first --quantizer (columns keep the order of appearance)
    for col in [c for c in table.columns if c != base.name]:
        table[f"{col} / {base.name}"] = table[col] / base
    print(
        "Relative output error ||X (W - W_hat)||^2 / ||X W||^2 per layer on the calibration split "
        "(float-model inputs)\n"
    )
    print(table.reset_index().to_markdown(index=False, floatfmt=".4g"))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from q4lab.sweep import WandbSettings, load_experiment, run_experiment
    from q4lab.sweep.runner import missing_points

    experiment = load_experiment(args.experiment)  # validated: nothing runs on a bad file
    directory = Path(args.results) / experiment.name
    total, missing = len(experiment.points), missing_points(experiment, args.results)
    if not missing:
        print(
            f"All {total} points of {experiment.name!r} are already in "
            f"{directory / 'runs.parquet'}: nothing to run.\n"
            f"  To run them afresh: q4lab run {args.experiment} --results <another directory>\n"
            f"  To see them: q4lab plot {directory} && q4lab report {directory}"
        )
        return 0
    if missing < total:
        print(f"{total - missing} of {total} points are already in {directory}; running {missing}")
    if args.no_wandb:
        wandb = WandbSettings(mode="disabled")
    elif args.wandb_project:
        wandb = WandbSettings(mode="online", project=args.wandb_project, entity=args.wandb_entity)
    else:
        wandb = WandbSettings()
    table = run_experiment(
        experiment,
        args.results,
        executor=args.executor,
        address=args.address,
        wandb=wandb,
        progress=not args.no_progress,
    )
    print(f"{len(table)} rows in {directory / 'runs.parquet'}; plot: q4lab plot {directory}")
    return 0


def _read_results(directory: str):
    from q4lab.sweep import ResultsStore

    store = ResultsStore(directory)
    if not store.path.exists():
        raise ValueError(f"no results table at {str(store.path)!r}; run `q4lab run` first")
    return store.read()


def _cmd_plot(args: argparse.Namespace) -> int:
    from q4lab.plots import save_plot

    table = _read_results(args.results)
    for x in args.x:
        paths = save_plot(
            table,
            args.results,
            x=x,
            y=args.y,
            hue=args.hue,
            facet=args.facet,
            style=None if args.style == "none" else args.style,
            columns=None if args.columns == "none" else args.columns,
            title=args.title,
        )
        print("\n".join(str(p) for p in paths))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from q4lab.report import report

    text = report(_read_results(args.results), y=args.y, x=args.x, title=Path(args.results).name)
    print(text)
    if args.write:
        (Path(args.results) / "report.md").write_text(text)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from q4lab.reproduce import format_comparison, reproduce

    if args.rows is None:
        rows = None
    elif args.rows == ["all"]:
        rows = "all"
    else:
        try:
            rows = [int(r) for r in args.rows]
        except ValueError:
            raise ValueError(
                f"--rows {' '.join(args.rows)} is invalid; allowed: 'all' or row numbers"
            ) from None
    result = reproduce(
        args.results,
        sample=args.sample,
        rows=rows,
        seed=args.seed,
        tol=args.tol,
        experiment=args.experiment,
        progress=False if args.no_progress else None,
    )
    print(format_comparison(result))
    return 0 if result.ok else 1


def _cmd_ls(args: argparse.Namespace) -> int:
    from q4lab.quantizers import available
    from q4lab.sweep import FIELDS
    from q4lab.tasks import available_tasks

    print("tasks:      " + ", ".join(available_tasks()))
    print("quantizers: " + ", ".join(available()))
    experiments = sorted(Path(args.experiments).glob("*.py"))
    print("experiments: " + ", ".join(str(p) for p in experiments))
    print("\nsweep fields (experiments/*.py, Sweep(grid={field: [values]})):")
    for name, (default, meaning) in FIELDS.items():
        print(f"  {name:<22} {meaning} (default {default!r})")
    return 0


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """Flags whose every combination is a recipe (one rule for every layer)."""
    parser.add_argument("--task", nargs="+", default=["digits-mlp"], help="task name(s)")
    parser.add_argument(
        "--quantizer",
        nargs="+",
        default=["minmax"],
        help="quantizer name(s), each optionally with options: gptq:act_order=true,percdamp=0.1",
    )
    parser.add_argument("--bits", nargs="+", type=int, default=[4], help="weight bits")
    parser.add_argument(
        "--group", nargs="+", type=int, default=[0], help="group size(s); 0 = per-channel"
    )
    parser.add_argument(
        "--act-bits", nargs="+", type=int, default=[16], help="activation bits; 16 = float"
    )
    parser.add_argument("--act-mode", choices=["dynamic", "static"], default="dynamic")
    parser.add_argument("--asym", action="store_true", help="asymmetric weights (zero points)")
    parser.add_argument(
        "--scale-dtype", default="float16", choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument(
        "--float-inputs",
        action="store_true",
        help="calibrate every layer on the float model's activations (default: sequential, "
        "with earlier layers already quantized)",
    )
    parser.add_argument("--seed", nargs="+", type=int, default=[0])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="q4lab", description="INT4 quantization research in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="quantize synthetic matrices with every quantizer and print the errors"
    )
    demo.add_argument("--k", type=int, default=512, help="input size of each matrix")
    demo.add_argument("--n", type=int, default=512, help="output size of each matrix")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)

    quant = sub.add_parser(
        "quantize",
        help="quantize a task's float baseline and print its metric, size and checks",
        description="Every combination of the listed values is evaluated (one row each).",
    )
    _add_recipe_flags(quant)
    quant.set_defaults(func=_cmd_quantize)

    layer_error = sub.add_parser(
        "layer-error",
        help="per-layer output error of each recipe on a task's calibration data",
        description="Compares quantizers layer by layer; ratios are to the first --quantizer.",
    )
    _add_recipe_flags(layer_error)
    layer_error.set_defaults(func=_cmd_layer_error, float_inputs=True)

    run = sub.add_parser(
        "run",
        help="run an experiment file's sweep into results/<experiment>/runs.parquet (resumable)",
    )
    run.add_argument("experiment", help="an experiment file, e.g. experiments/quickstart.py")
    run.add_argument("--results", default="results", help="results root directory")
    run.add_argument("--executor", choices=["local", "ray"], default="local")
    run.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    run.add_argument("--no-wandb", action="store_true", help="do not log to wandb")
    run.add_argument("--wandb-project", default=None, help="log online to this wandb project")
    run.add_argument("--wandb-entity", default=None)
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=_cmd_run)

    plot = sub.add_parser("plot", help="Pareto plots (PNG + SVG) of a results directory")
    plot.add_argument("results", help="e.g. results/quickstart")
    plot.add_argument(
        "--x",
        nargs="+",
        default=["bits_per_weight", "ideal_bits_per_weight"],
        help="x column(s), one figure each (default both: bits_per_weight counts what is stored, "
        "2- and 3-bit codes in nibbles; ideal_bits_per_weight counts them at their width)",
    )
    plot.add_argument("--y", default="score", help="default: each task's headline metric")
    plot.add_argument("--hue", default="quantizer", help="colour per value")
    plot.add_argument("--facet", default=None, help="a row of panels per value (default: task)")
    plot.add_argument(
        "--columns", default="act_bits", help="a panel per value in a row; 'none' to disable"
    )
    plot.add_argument("--style", default="bits", help="marker per value; 'none' to disable")
    plot.add_argument("--title", default=None, help="default: the task, the metric and the x axis")
    plot.set_defaults(func=_cmd_plot)

    rep = sub.add_parser(
        "report",
        help="markdown: the Pareto-best point per bit budget, deltas within seed noise flagged",
    )
    rep.add_argument("results", help="e.g. results/quickstart")
    rep.add_argument("--y", default="score", help="default: each task's headline metric")
    rep.add_argument(
        "--x",
        default="bits_per_weight",
        help="the budget's column (ideal_bits_per_weight: 3-bit codes counted as 3)",
    )
    rep.add_argument("--write", action="store_true", help="also write <results>/report.md")
    rep.set_defaults(func=_cmd_report)

    repro = sub.add_parser(
        "reproduce",
        help="rerun a sample of a results table; the largest difference per column",
        description="Reruns rows of <results>/runs.parquet and compares every column: sizes "
        "exactly, metrics within --tol, float-noise diagnostics shown only. Exit status 1 if "
        "a difference exceeds its tolerance. On the same CPU type and package versions every "
        "difference should be 0; on another CPU scores may move by a test example or two.",
    )
    repro.add_argument("results", help="e.g. results/quickstart")
    repro.add_argument("--sample", type=int, default=4, help="rows, spread over task/quantizer")
    repro.add_argument("--rows", nargs="+", default=None, help="'all', or row numbers")
    repro.add_argument("--seed", type=int, default=0, help="seed of the sample")
    repro.add_argument(
        "--tol", type=float, default=0.0, help="largest absolute metric difference (default 0)"
    )
    repro.add_argument("--experiment", default=None, help="default: experiments/<name>.py")
    repro.add_argument("--no-progress", action="store_true")
    repro.set_defaults(func=_cmd_reproduce)

    ls = sub.add_parser("ls", help="list tasks, quantizers, experiments and sweep fields")
    ls.add_argument("--experiments", default="experiments")
    ls.set_defaults(func=_cmd_ls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # configuration errors: one clear line, no traceback
        parser.exit(2, f"q4lab {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
