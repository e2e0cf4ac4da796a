"""`reproduce(results_dir)`: rerun a sample of a published results table and compare it, column
by column, with what this machine computes now (``q4lab reproduce results/<name>``).

Each sampled row is turned back into its sweep point (its grid fields, checked against the row's
``config_hash``; else looked up in the experiment file), evaluated exactly as `q4lab run` does
(`q4lab.sweep.runner.evaluate_point`), and every column both records hold is compared:

``size``        the size ledger (bytes, parameter counts, bits per weight, compression): exact.
``metric``      the scores (``score``, ``fp_score``, ``delta_score`` and the task's own metrics):
                absolute difference at most ``tol`` (default 0: a same-platform check).
``diagnostic``  the real-vs-fake agreement (``fake_*``): shown, never failing; they measure float
                rounding noise, which is expected to move on another CPU.
``label``       text and flags (recipe description, granularity, ...): equal.

Timings and the manifest (versions, platform, CPU, BLAS, commit, time) are not compared; the
CPU (its cores included) and BLAS (kernels, threads) of the table and of this machine are printed
above the comparison.

Same CPU, core count, BLAS kernels and threads, and package versions: every difference should be 0.
On another CPU the float baselines still match when they are loaded from the published files
(`q4lab.baselines`), but two things may round differently. XLA:CPU may order float sums
differently, so a weight or activation code at a rounding boundary can flip and a score move by a
test example or two (digits: 1/450 = 0.0022; mnist1d: 1/1000). GPTQ moves more: XLA:CPU rounds
its Hessians (``X^T X``) differently on another core count, and jax's CPU LAPACK (its Cholesky
factors) runs in SciPy's OpenBLAS, whose kernels are chosen per CPU model (or named by
``OPENBLAS_CORETYPE``) and whose thread count is one per core (or ``OPENBLAS_NUM_THREADS``). On
another core count, or with other kernels or threads, GPTQ's codes change and its scores move by
up to a few hundredths at 2 and 3 bits (quickstart with Haswell kernels against the tables'
SkylakeX ones, 2 cores each: 17 of 160 rows, all GPTQ, up to 0.021; on 1 core, 4 of 5 rows at 2
bits, up to 0.011). Running on the table's core count with its kernels reruns it where the CPU
has them (README; the published tables: 2 cores, SkylakeX).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from q4lab.manifest import PACKAGES
from q4lab.sweep.fields import FIELDS, Point, config_hash
from q4lab.sweep.store import python_value

SIZE_COLUMNS = frozenset(
    {
        "total_bytes",
        "quantized_bytes",
        "float_bytes",
        "params",
        "quantized_params",
        "fp32_bytes",
        "bits_per_weight",
        "ideal_bits_per_weight",
        "compression",
        "calib_examples",
    }
)
DIAGNOSTIC_COLUMNS = frozenset({"fake_rel_diff", "fake_rel_diff_max", "fake_agreement"})
NOT_COMPARED = frozenset(
    {
        "experiment",
        "config_hash",
        "python_version",
        "platform",
        "device",
        "dispatch",
        "cpu",
        "blas",
        "git_commit",
        "timestamp",
        *(f"{name}_version" for name in PACKAGES),
    }
)
TIMING_SUFFIXES = (
    "_seconds",
    "_seconds_per_step",
)  # wall times (quantize, eval, qat): not compared


def is_compared(column: str) -> bool:
    """Whether `reproduce` compares ``column``: not run metadata, nor a wall time."""
    return column not in NOT_COMPARED and not column.endswith(TIMING_SUFFIXES)


SHOWN_FIELDS = ("task", "seed", "quantizer", "bits", "group_size", "act_bits")
# shown beside them where a row sets them: what tells a trained or mixed point from a plain one
METHOD_FIELDS = ("bits_budget", "qat_steps", "qat_method", "calib_padding")


def _shown(row: pd.Series | dict, point: Point) -> dict[str, Any]:
    """The fields that name a row in the tables: `SHOWN_FIELDS`, and `METHOD_FIELDS` in use."""
    shown = {k: python_value(row.get(k, point[k])) for k in SHOWN_FIELDS}
    trained = bool(point.get("qat_steps"))
    for k in METHOD_FIELDS:
        if k == "calib_padding" and point.get(k, "include") == "include":
            continue  # the default: every row before the field
        if point.get(k) and (trained or not k.startswith("qat")):
            shown[k] = point[k]
    return shown


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The outcome of `reproduce`.

    ``rows``: one line per rerun row (its fields, the published and the reproduced score).
    ``columns``: one line per compared column: its kind, the check applied, the largest absolute
    and relative difference over the rows, the row where the largest one occurred, and ``ok``.
    """

    source: str
    total_rows: int
    rows: pd.DataFrame
    columns: pd.DataFrame
    tol: float
    published_with: str
    here: str

    @property
    def ok(self) -> bool:
        return bool(self.columns["ok"].all())


def candidate_points(row: pd.Series) -> list[Point]:
    """Points the row's fields may come from. Rows store the evaluated recipe's fields over the
    grid's: ``quantizer`` is a label (``quantizer_name`` is the name) and ``act_mode`` is
    "none" for float activations, whatever the grid said."""
    point: Point = {}
    for name, (default, _) in FIELDS.items():
        value = python_value(row[name]) if name in row.index else default
        if isinstance(default, dict | list) and isinstance(value, str):
            value = json.loads(value)
        point[name] = value
    if "quantizer_name" in row.index:
        point["quantizer"] = python_value(row["quantizer_name"])
    if point["act_mode"] != "none":
        return [point]
    return [point | {"act_mode": mode} for mode in ("dynamic", "static")]


def point_of(row: pd.Series, experiment_points: dict[str, Point] | None = None) -> Point:
    """The sweep point of a results row, checked against its ``config_hash``."""
    for point in candidate_points(row):
        if config_hash(point) == row["config_hash"]:
            return point
    if experiment_points and row["config_hash"] in experiment_points:
        return experiment_points[row["config_hash"]]
    raise ValueError(
        f"cannot rebuild the point of row {row.name} (config_hash {row['config_hash']}) from its "
        "fields, and the experiment file does not list it; pass --experiment <file>"
    )


def sample_rows(table: pd.DataFrame, n: int, seed: int = 0) -> list[int]:
    """``n`` row positions drawn with ``seed``, spread over (task, quantizer): one from each
    group in a shuffled order, then a second from each, and so on."""
    if n < 1:
        raise ValueError(f"sample={n} is invalid; allowed: >= 1")
    rng = np.random.default_rng(seed)
    keys = [k for k in ("task", "quantizer") if k in table.columns]
    groups = [rng.permutation(g).tolist() for g in table.groupby(keys, sort=True).indices.values()]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    chosen: list[int] = []
    while len(chosen) < min(n, len(table)):
        for group in groups:
            if group and len(chosen) < n:
                chosen.append(group.pop())
    return sorted(chosen)


def _kind(column: str) -> str:
    if column in SIZE_COLUMNS:
        return "size"
    if column in DIAGNOSTIC_COLUMNS:
        return "diagnostic"
    return "metric"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def _compare_column(
    column: str, published: list[Any], now: list[Any], labels: list[str], tol: float
) -> dict[str, Any]:
    if all(_is_number(v) for v in published + now):
        kind = _kind(column)
        old, new = np.asarray(published, np.float64), np.asarray(now, np.float64)
        same = (old == new) | (np.isnan(old) & np.isnan(new))  # inf as inf, NaN as NaN
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(new - old))
        diff = np.where(np.isnan(diff), np.inf, diff)  # a number against NaN
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(diff == 0, 0.0, diff / np.abs(old))
        allowed = {"size": 0.0, "metric": tol, "diagnostic": math.inf}[kind]
        check = {"size": "exact", "metric": "exact" if tol == 0 else f"abs <= {tol:g}"}.get(
            kind, "shown only"
        )
        worst = int(np.argmax(diff))
        return {
            "column": column,
            "kind": kind,
            "check": check,
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(rel.max()),
            "worst_row": labels[worst] if diff.max() > 0 else "",
            "ok": bool(diff.max() <= allowed * (1 + 1e-9)),  # |0.905 - 0.904| > 0.001
        }
    differ = [i for i, (a, b) in enumerate(zip(published, now, strict=True)) if a != b]
    return {
        "column": column,
        "kind": "label",
        "check": "equal",
        "max_abs_diff": math.nan,
        "max_rel_diff": math.nan,
        "worst_row": f"{len(differ)} differ, e.g. {labels[differ[0]]}" if differ else "",
        "ok": not differ,
    }


SCORE_COLUMNS = ("score", "fp_score", "delta_score")  # in every row any version wrote


def _present(record: dict[str, Any], column: str) -> Any:
    """The record's value, or None where it has none (absent, or NaN in a mixed table). A score
    (`SCORE_COLUMNS`, the row's own metric) is always recorded: NaN there is its value (a run
    that diverged), which a rerun must reproduce."""
    value = python_value(record.get(column))
    scored = column in SCORE_COLUMNS or column == record.get("metric")
    return None if isinstance(value, float) and math.isnan(value) and not scored else value


def _column(
    column: str,
    published: list[dict[str, Any]],
    records: list[dict[str, Any]],
    labels: list[str],
    tol: float,
) -> dict[str, Any] | None:
    """The comparison of one column over the rows holding it (None: no row holds it, or only
    the new records do: a column added since the table was written). A column the table has
    and a new record lacks (or the reverse, row by row) fails."""
    pairs = [
        (_present(p, column), _present(r, column), label)
        for p, r, label in zip(published, records, labels, strict=True)
    ]
    pairs = [t for t in pairs if t[0] is not None or t[1] is not None]
    if column in FIELDS:  # a grid field: an input, compared only where the record restates it
        pairs = [t for t in pairs if t[1] is not None]
    if all(old is None for old, _, _ in pairs):
        return None
    absent = [label for old, new, label in pairs if old is None or new is None]
    if absent:
        return {
            "column": column,
            "kind": _kind(column),
            "check": "in both",
            "max_abs_diff": math.nan,
            "max_rel_diff": math.nan,
            "worst_row": f"{len(absent)} rows lack it, e.g. {absent[0]}",
            "ok": False,
        }
    old, new, rows = (list(t) for t in zip(*pairs, strict=True))
    return _compare_column(column, old, new, rows, tol)


def _versions(frame: pd.DataFrame) -> str:
    parts = []
    for column in ("jax_version", "jaxlib_version", "git_commit"):
        if column in frame.columns:
            values = sorted({str(v) for v in frame[column]})
            short = [v[:12] + ("-dirty" if v.endswith("-dirty") else "") for v in values]
            parts.append(f"{column.removesuffix('_version')} {', '.join(short)}")
    for column in ("cpu", "blas"):  # what orders float sums and LAPACK's roundings
        values = sorted({str(v) for v in frame.get(column, pd.Series()).dropna() if v})
        if values:
            parts.append(f"{column} {' / '.join(values)}")
    return "; ".join(parts)


def reproduce(
    results_dir: str | Path,
    *,
    sample: int = 4,
    rows: str | list[int] | None = None,
    seed: int = 0,
    tol: float = 0.0,
    experiment: str | Path | None = None,
    progress: bool | None = None,
) -> Comparison:
    """Rerun rows of ``results_dir/runs.parquet`` and compare every column with the table.

    ``rows``: ``"all"``, a list of row positions, or None for a ``sample`` of rows drawn with
    ``seed`` (`sample_rows`). ``tol``: the largest absolute difference allowed in metric columns
    (sizes are always exact). ``experiment``: the experiment file, needed only when a row's point
    cannot be rebuilt from its fields (default ``experiments/<experiment>.py`` if it exists) or
    when the rows use a quantizer the file registers; a given file is run first.
    """
    from tqdm.auto import tqdm

    from q4lab.manifest import manifest
    from q4lab.sweep import ResultsStore
    from q4lab.sweep.runner import evaluate_point

    store = ResultsStore(results_dir)
    if not store.path.exists():
        raise ValueError(f"no results table at {str(store.path)!r}")
    if tol < 0:
        raise ValueError(f"tol={tol} is invalid; allowed: >= 0")
    table = store.read()
    if rows == "all":
        positions = list(range(len(table)))
    elif rows is None:
        positions = sample_rows(table, sample, seed)
    else:
        bad = [i for i in rows if not 0 <= i < len(table)]
        if bad:
            raise ValueError(f"rows={bad} are invalid; allowed: 0..{len(table) - 1} or 'all'")
        positions = list(rows)

    # a given file is run first: it registers what its rows need (a quantizer of one's own)
    lookup = None if experiment is None else _experiment_points(table.iloc[0], experiment)
    points = []
    for i in positions:
        row = table.iloc[i]
        try:
            points.append(point_of(row))
        except ValueError:
            if lookup is None:
                lookup = _experiment_points(row, experiment)
            points.append(point_of(row, lookup))

    records = []
    labels = []
    bar = tqdm(
        points, desc="reproduce", unit="row", disable=None if progress is None else not progress
    )
    for i, point in zip(positions, bar, strict=True):
        shown = _shown(table.iloc[i], point)
        labels.append(f"#{i} " + " ".join(f"{k}={v}" for k, v in shown.items()))
        records.append(evaluate_point(point))

    published = [table.iloc[i].to_dict() for i in positions]
    names = list(table.columns) + [c for r in records for c in r if c not in table.columns]
    compared = [
        c
        for name in dict.fromkeys(names)
        if is_compared(name)
        and (c := _column(name, published, records, labels, tol)) is not None
        # grid fields are inputs, and equal labels say nothing: shown only when they differ
        and (not c["ok"] or (c["kind"] != "label" and name not in FIELDS))
    ]
    per_row = pd.DataFrame(
        [
            {
                "row": i,
                **_shown(p, point),
                "published score": p.get("score"),
                "score now": r.get("score"),
                "difference": r.get("score", math.nan) - p.get("score", math.nan),
            }
            for i, point, p, r in zip(positions, points, published, records, strict=True)
        ]
    )
    methods = [c for c in METHOD_FIELDS if c in per_row]  # blank where a row does not set it
    per_row[methods] = per_row[methods].astype(object).where(per_row[methods].notna(), "")
    first = ["row", *SHOWN_FIELDS, *methods]
    per_row = per_row[first + [c for c in per_row if c not in first]]
    here = manifest()
    return Comparison(
        source=str(store.path),
        total_rows=len(table),
        rows=per_row,
        columns=pd.DataFrame(compared),
        tol=tol,
        published_with=_versions(table),
        here=_versions(pd.DataFrame([here])),
    )


def _experiment_points(row: pd.Series, experiment: str | Path | None) -> dict[str, Point]:
    from q4lab.sweep import load_experiment

    path = Path(experiment or Path("experiments") / f"{row['experiment']}.py")
    if not path.exists():
        raise ValueError(
            f"cannot rebuild the point of row {row.name} (config_hash {row['config_hash']}) from "
            f"its fields (a mixed-precision row holds its allocation's), and {path} does not "
            "exist; pass --experiment <the file that ran it>"
        )
    loaded = load_experiment(path)
    return dict(zip(loaded.hashes, loaded.points, strict=True))


def format_comparison(result: Comparison) -> str:
    """Markdown: what was rerun, each row's score, and each column's largest difference."""
    status = "reproduced" if result.ok else "DIFFERS"
    lines = [
        f"{result.source}: {len(result.rows)} of {result.total_rows} rows rerun: {status}",
        f"published with {result.published_with}",
        f"here:          {result.here}",
        "",
        result.rows.to_markdown(index=False, floatfmt=".6g"),
        "",
        "Largest difference per column over the rerun rows (size: exact; metric: "
        + ("exact" if result.tol == 0 else f"absolute <= {result.tol:g}")
        + "; diagnostic: float noise, shown only):",
        "",
        result.columns.assign(
            ok=result.columns["ok"].map({True: "ok", False: "DIFFERS"})
        ).to_markdown(index=False, floatfmt=".3g"),
    ]
    if not result.ok:
        lines += [
            "",
            "A size that differs is a change in what is stored. A score that differs follows the "
            "machine: CPU type, core count, BLAS kernels and threads (the two lines above), "
            "versions. Within one machine every difference is 0; --tol T accepts scores up to T "
            "apart (README, `q4lab reproduce`).",
        ]
    return "\n".join(lines)
