"""The ``q4lab`` command line."""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import re
import sys
import traceback
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
        "not padding); the weights were quantized as the recipe says: sequentially unless "
        "--float-inputs, calibrated on padding too unless --calib-padding exclude\n"
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


def _rerun_command(args: argparse.Namespace) -> str:
    """The `q4lab run` command line of ``args``, every flag given kept (to resume it)."""
    import shlex

    words = ["q4lab", "run", str(args.experiment), "--results", str(args.results)]
    if args.executor != "local":
        words += ["--executor", args.executor]
    for flag in ("address", "wandb_project", "wandb_entity"):
        if getattr(args, flag):
            words += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    words += [f"--{f.replace('_', '-')}" for f in ("no_wandb", "no_progress") if getattr(args, f)]
    return shlex.join(words)


def _cmd_run(args: argparse.Namespace) -> int:
    from q4lab.sweep import ResultsStore, WandbSettings, load_experiment, run_experiment
    from q4lab.sweep.runner import changed_quantizers, missing_points

    experiment = load_experiment(args.experiment)  # validated: nothing runs on a bad file
    directory = Path(args.results) / experiment.name
    try:  # before any point runs: a --results that cannot hold the table fails now, not later
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--results {args.results!r} cannot hold {directory}: {err.strerror}"
        ) from err
    ResultsStore(directory).check_writable()  # read-only, full, or a table that cannot be read
    if experiment.merged:
        print(
            f"Note: {len(experiment.merged)} point{'s' * (len(experiment.merged) > 1)} of "
            f"{args.experiment} run another point's configuration (they differ only in fields "
            "that change nothing there); each runs once:\n  " + "\n  ".join(experiment.merged)
        )
    total, missing = len(experiment.points), missing_points(experiment, args.results)
    others = ResultsStore(directory).done() - set(experiment.hashes)
    if others:
        print(
            f"Note: {len(others)} row{'s' * (len(others) > 1)} in {directory / 'runs.parquet'} "
            f"not among the points of {args.experiment} (an earlier grid, or another file named "
            f"{experiment.name!r}); plot and report show every row"
        )
    if changed := changed_quantizers(experiment, args.results):
        print(
            f"Note: rows in {directory / 'runs.parquet'} were made by a quantizer whose code or "
            "defaults have changed since; they are kept, not rerun (to rerun them: another "
            "--results):\n  " + "\n  ".join(changed)
        )
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
    try:
        table = run_experiment(
            experiment,
            args.results,
            executor=args.executor,
            address=args.address,
            wandb=wandb,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:  # every finished point is saved: say so instead of a traceback
        saved = total - missing_points(experiment, args.results)
        print(
            f"\nInterrupted: {saved} of {total} points are saved in {directory / 'runs.parquet'}."
            f"\n  To run the rest: {_rerun_command(args)}",
            file=sys.stderr,
        )
        return 130
    except Exception as err:  # a point failed: name it, and say what is saved
        from q4lab.sweep.runner import FAILED_POINT

        if not isinstance(err, ValueError):  # a bug somewhere: its traceback helps
            traceback.print_exc()
        point = [
            n[len(FAILED_POINT) :]
            for n in getattr(err, "__notes__", ())
            if n.startswith(FAILED_POINT)
        ]
        saved = total - missing_points(experiment, args.results)
        what = f"a point failed ({point[0]})" if point else "the run failed"
        print(
            f"\nq4lab run: {what}: {type(err).__name__}: {err}\n{saved} of {total} points are "
            "saved in "
            f"{directory / 'runs.parquet'}.\n  After a fix, the same command runs the rest: "
            f"{_rerun_command(args)}",
            file=sys.stderr,
        )
        return 1
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

    text = report(
        _read_results(args.results),
        y=args.y,
        x=args.x,
        title=Path(args.results).name,
        compare=args.compare,
    )
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
    folder = Path(args.experiments)
    experiments = ", ".join(str(p) for p in sorted(folder.glob("*.py")))
    missing = "" if folder.is_dir() else f" (no such folder in {Path.cwd()}; --experiments DIR)"
    print("experiments: " + (experiments or f"none in {str(folder)!r}{missing}"))
    print("\nsweep fields (experiments/*.py, Sweep(grid={field: [values]})):")
    for name, (default, meaning) in FIELDS.items():
        print(f"  {name:<22} {meaning} (default {default!r})")
    return 0


def _add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per sweep field (`q4lab ls`), each taking one or more values; every combination
    is a point. Values are Python literals (``true``/``false`` accepted), e.g. ``--options
    "{'act_order': True}"``; ``--quantizer gptq:act_order=true`` sets the options too."""
    from q4lab.recipe import literal_value
    from q4lab.sweep.fields import FIELDS

    for name, (default, meaning) in FIELDS.items():
        if name == "task":
            meaning, default = "registered task name(s)", "digits-mlp"
        flags = [f"--{name.replace('_', '-')}"]
        if name == "group_size":
            flags.append("--group")
        parser.add_argument(
            *flags,
            dest=name,
            nargs="+",
            type=str if name in ("task", "quantizer") else literal_value,
            default=["digits-mlp"] if name == "task" else None,
            help=f"{meaning} (default {default!r})",
        )
    parser.add_argument("--asym", action="store_true", help="asymmetric weights: --symmetric false")
    parser.add_argument(
        "--float-inputs",
        action="store_true",
        help="calibrate every layer on the float model's activations: --sequential false",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="q4lab", description="INT4 quantization research in JAX")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE before the command (repeatable; the current folder is searched "
        "too): a module that registers quantizers or tasks of one's own, e.g. q4lab --plugin "
        "myquant quantize --task digits-mlp --quantizer mine. An experiment file imports its own",
    )
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

    sens = sub.add_parser(
        "sensitivity",
        help="per-layer sensitivity: the loss to float with only one layer quantized, per width",
        description="Every --bits value is a candidate width; other flags as `q4lab quantize`. "
        "Writes a table (CSV) and a heat map; the measurements are cached for bits_budget sweeps.",
    )
    _add_recipe_flags(sens)
    sens.add_argument("--out", default="results/sensitivity", help="directory of the outputs")
    sens.set_defaults(func=_cmd_sensitivity)

    run = sub.add_parser(
        "run",
        help="run an experiment file's sweep into results/<experiment>/runs.parquet (resumable)",
    )
    run.add_argument("experiment", help="an experiment file, e.g. experiments/quickstart.py")
    run.add_argument(
        "--results", default="results", help="results root directory (default: ./results)"
    )
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
        "5- to 8-bit codes in bytes; ideal_bits_per_weight counts every code at its width)",
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
        help="the budget's column, a size (ideal_bits_per_weight: 3-bit codes counted as 3; "
        "also total_bytes, quantized_bytes, bits)",
    )
    rep.add_argument(
        "--compare",
        metavar="FIELD",
        help="also what changing FIELD (a grid field the table varies, e.g. calib_padding, "
        "sequential) does to each configuration, paired by seed",
    )
    rep.add_argument("--write", action="store_true", help="also write <results>/report.md")
    rep.set_defaults(func=_cmd_report)

    repro = sub.add_parser(
        "reproduce",
        help="rerun a sample of a results table; the largest difference per column",
        description="Reruns rows of <results>/runs.parquet and compares every column: sizes "
        "exactly, metrics within --tol, float-noise diagnostics shown only. Exit status 1 if "
        "a difference exceeds its tolerance. On the same CPU type, core count, BLAS kernels and "
        "threads and package versions every difference should be 0; on another CPU scores may "
        "move by a test example or two, GPTQ's by a few hundredths on another core count or with "
        "other OpenBLAS kernels or threads (README).",
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
    ls.add_argument(
        "--experiments",
        default="experiments",
        help="a folder of experiment files (default: ./experiments)",
    )
    ls.set_defaults(func=_cmd_ls)
    for command in sub.choices.values():  # a wrong flag is shown with its command's usage
        command.set_defaults(parser=command)
    return parser


def _import_plugins(modules: Sequence[str]) -> None:
    if modules:
        from q4lab.sweep.experiment import search_last

        search_last(Path.cwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            where = ""
            if isinstance(err, ModuleNotFoundError) and err.name == module.split(".")[0]:
                where = f" (searched: the installed packages and the current folder, {Path.cwd()})"
            raise ValueError(f"--plugin {module}: {err}{where}") from err


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        _import_plugins(args.plugin)
        return args.func(args)
    except ValueError as err:  # configuration errors: one clear line, no traceback
        parser.exit(2, f"q4lab {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
