"""The ``q4lab`` command line: its parser, plugin import and `main`; the commands themselves are in
`q4lab.cli.measure` (demo, quantize, layer-error, sensitivity) and `q4lab.cli.results` (run,
plot, report, reproduce, ls)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from pathlib import Path

from q4lab.cli.measure import (
    _add_recipe_flags,
    _cmd_demo,
    _cmd_layer_error,
    _cmd_quantize,
    _cmd_sensitivity,
)
from q4lab.cli.results import _cmd_ls, _cmd_plot, _cmd_report, _cmd_reproduce, _cmd_run


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
    _add_recipe_flags(layer_error, sequential=False)  # from the float model's inputs
    layer_error.set_defaults(func=_cmd_layer_error)

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
