"""The commands of an experiment's sweep and its results table: ``run``, ``plot``, ``report``,
``reproduce``, and ``ls`` (tasks, quantizers, experiment files and sweep fields)."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path


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
