"""Sweeps end to end: experiment file -> results table -> plot, report and notebook; resuming
after SIGKILL; the Ray executor; compiled functions shared between points."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from q4lab.cli import main
from q4lab.evaluate import evaluate
from q4lab.quantized_model import _forward
from q4lab.sweep import ResultsStore, WandbSettings, load_experiment, recipe_of, run_experiment

pytestmark = pytest.mark.slow
OFF = WandbSettings(mode="disabled")
REPO = Path(__file__).resolve().parents[2]
# columns that must match between executors (timings and timestamps differ by nature)
METRICS = ["config_hash", "accuracy", "fp_accuracy", "score", "bits_per_weight", "total_bytes"]


@pytest.fixture(autouse=True)
def _cache(task_cache):
    pass


def write_experiment(directory: Path, name: str, grid: str) -> Path:
    path = directory / f"{name}.py"
    path.write_text(
        textwrap.dedent(
            f"""
            from q4lab.sweep import Sweep
            sweep = Sweep(name={name!r}, grid={grid})
            """
        )
    )
    return path


def test_experiment_file_to_table_plot_report_and_notebook(tmp_path, capsys):
    path = write_experiment(
        tmp_path,
        "tiny",
        '{"task": ["digits-mlp"], "quantizer": ["minmax", "gptq"], "group_size": [0, 16], '
        '"seed": [0, 1]}',
    )
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--no-progress"]) == 0
    table = pd.read_parquet(results / "tiny" / "runs.parquet")
    assert len(table) == 8 and table["config_hash"].is_unique
    assert set(table["quantizer"]) == {"minmax", "gptq"}
    assert (table["accuracy"] > 0.9).all()
    assert {"git_commit", "jax_version", "device", "bits_per_weight"} <= set(table)
    assert len(list((results / "tiny" / "wandb").glob("offline-run-*"))) == 8  # wandb, offline

    assert main(["run", str(path), "--results", str(results), "--no-progress"]) == 0
    assert len(pd.read_parquet(results / "tiny" / "runs.parquet")) == 8  # nothing rerun

    assert main(["plot", str(results / "tiny")]) == 0
    for ext in ("png", "svg"):
        assert (results / "tiny" / "plots" / f"score_vs_bits_per_weight.{ext}").stat().st_size
    assert main(["report", str(results / "tiny"), "--write"]) == 0
    report = (results / "tiny" / "report.md").read_text()
    assert "| gptq" in report and "delta_score" in report and "accuracy" in report

    notebook = nbformat.read(REPO / "notebooks" / "explore_results.ipynb", as_version=4)
    os.environ["Q4LAB_RESULTS"] = str(results / "tiny")
    try:
        NotebookClient(
            notebook, timeout=300, resources={"metadata": {"path": str(REPO / "notebooks")}}
        ).execute()
    finally:
        del os.environ["Q4LAB_RESULTS"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plots were drawn


def test_a_mixed_recipe_from_a_file_and_from_the_cli_gives_one_row(tmp_path, capsys):
    """8-bit first layer, float last layer, 3-bit elsewhere: the rules field in an experiment
    file and on the command line name the same point and measure the same thing."""
    rules = [{"pattern": "Dense_0", "bits": 8}, {"pattern": "Dense_2", "quantizer": None}]
    path = write_experiment(
        tmp_path, "mixed", f'{{"task": ["digits-mlp"], "bits": [3], "rules": [{rules!r}]}}'
    )
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--no-progress", "--no-wandb"]) == 0
    store = ResultsStore(results / "mixed")
    row = store.read().iloc[0]
    assert row["recipe_rules"] == (
        "Dense_0: minmax W8 sym per-channel f16 A16 | Dense_2: float | "
        ".*: minmax W3 sym per-channel f16 A16"
    )
    layers = store.layers().set_index("layer")
    assert (layers["config_hash"] == row["config_hash"]).all()
    assert layers["bits"].to_dict() == {"Dense_0": 8, "Dense_1": 3, "Dense_2": 32}  # float32
    assert layers["rule"].to_dict() == {"Dense_0": 0, "Dense_1": 2, "Dense_2": 1}
    assert layers["stored_bytes"].sum() < row["total_bytes"]  # biases are not layers

    capsys.readouterr()
    args = ["quantize", "--task", "digits-mlp", "--bits", "3", "--rules", repr(rules)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert row["config_hash"] in printed and f"{row['score']:.4g}" in printed


def test_a_bits_budget_point_allocates_widths_by_measured_sensitivity(tmp_path, capsys):
    path = tmp_path / "budget.py"
    path.write_text(
        "from q4lab.sweep import Sweep\n"
        "sweep = Sweep(name='budget', grid={'task': ['digits-mlp'], 'bits': [3], "
        "'group_size': [16]}, zipped=[{'bits_budget': [0.0, 3.6, 3.6], "
        "'budget_groups': [[], [], [0, 16]]}])\n"
    )
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--no-progress", "--no-wandb"]) == 0
    store = ResultsStore(results / "budget")
    uniform, mixed, grouped = (row for _, row in store.read().iterrows())
    # with budget_groups, each layer also gets its group size (0: per-channel)
    labels = json.loads(grouped["allocation_layers"])
    assert set(labels.values()) <= {f"W{w} {g}" for w in (2, 3, 4) for g in ("g16", "per-channel")}
    assert grouped["bits_per_weight"] <= 3.6
    layers = store.layers()
    rows = layers[layers["config_hash"] == grouped["config_hash"]].set_index("layer")
    assert {
        k: f"W{r.bits} " + (f"g{int(r.group_size)}" if r.group_size else "per-channel")
        for k, r in rows.iterrows()
    } == labels
    assert uniform["allocation"] == "uniform" and pd.isna(uniform["recipe_rules"])
    assert mixed["allocation"] == "sensitivity knapsack"
    assert mixed["bits_per_weight"] <= 3.6 < uniform["bits_per_weight"]
    layers = store.layers()
    chosen = layers[layers["config_hash"] == mixed["config_hash"]].set_index("layer")["bits"]
    assert chosen.to_dict() == {
        k: int(v[1:]) for k, v in json.loads(mixed["allocation_layers"]).items()
    }
    assert set(chosen) > {3}  # mixed widths
    from q4lab.report import mixed_comparison

    versus = mixed_comparison(store.read()).set_index("chooses from")
    assert set(versus.index) == {"W2/3/4 g16", "W2/3/4 x per-channel/g16"}
    versus = versus.loc["W2/3/4 g16"]
    assert versus["next uniform up"].startswith("W3 g16") and versus["mixed better"] in (
        True,
        False,
    )
    capsys.readouterr()
    args = ["sensitivity", "--task", "digits-mlp", "--bits", "2", "3", "4", "--group-size", "16"]
    assert main([*args, "--out", str(tmp_path / "sens")]) == 0  # cached by the sweep: no rerun
    assert "| Dense_0 |" in capsys.readouterr().out
    stem = tmp_path / "sens" / "digits-mlp-seed0-minmax-sensitivity-sym-g16"
    assert stem.with_suffix(".png").exists()
    table = pd.read_csv(stem.with_suffix(".csv"))
    assert (table["quantizer"] == "minmax").all()  # another quantizer writes its own files
    assert (table["weights"] == "symmetric, g16").all()  # and another group size or symmetry
    assert main([*args, "--calib-size", "64", "--out", str(tmp_path / "sens")]) == 0
    (other,) = (tmp_path / "sens").glob("*-sym-g16-*.csv")  # another setting: its own files
    assert (pd.read_csv(other)["weights"] == "symmetric, g16, calib_size=64").all()
    assert stem.with_suffix(".csv").exists()


def test_a_killed_sweep_resumes_with_every_point_exactly_once(tmp_path):
    path = write_experiment(
        tmp_path,
        "killed",
        '{"task": ["digits-mlp"], "quantizer": ["mse", "gptq"], "bits": [3, 4, 8]}',
    )
    results = tmp_path / "results"
    store = ResultsStore(results / "killed")
    command = [sys.executable, "-m", "q4lab.cli", "run", str(path), "--results", str(results)]
    command += ["--no-wandb", "--no-progress"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(store.done()) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = store.done()
    assert 3 <= len(finished) < 6, proc.stderr.read().decode()[-2000:]

    subprocess.run(command, check=True, capture_output=True)
    table = store.read()
    assert len(table) == 6 and table["config_hash"].is_unique
    assert set(table["config_hash"]) == set(load_experiment(path).hashes)
    assert finished <= set(table["config_hash"])
    assert not list(store.directory.glob(".runs-*"))  # a half-written file of the kill is gone


OWN_QUANTIZER = """
import dataclasses
from q4lab.quantizers import RangeQuantizer, register

@register
@dataclasses.dataclass(frozen=True)
class HalfRange(RangeQuantizer):
    name = "half-range"

    def weight_range(self, wg, spec):
        lo, hi = wg.min(axis=1, keepdims=True), wg.max(axis=1, keepdims=True)
        return lo / 2, hi / 2
"""


def test_ray_executor_gives_the_rows_of_the_local_one(tmp_path, monkeypatch):
    """With quantizers of one's own too, which the Ray workers must register as this process
    did: one from a module the experiment file imports, one from a module imported before (as
    `q4lab --plugin` does), one the file defines itself."""
    import importlib

    from q4lab.quantizers import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # forgotten after the test
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "plugins")])
    (tmp_path / "ray_test_own_quantizer.py").write_text(OWN_QUANTIZER)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "ray_test_plugin.py").write_text(
        OWN_QUANTIZER.replace("half-range", "plugin-range").replace("/ 2", "/ 3")
    )
    importlib.import_module("ray_test_plugin")
    path = write_experiment(
        tmp_path,
        "onray",
        '{"task": ["digits-mlp"], "quantizer": ["half-range", "plugin-range", "in-file"]}',
    )
    in_file = OWN_QUANTIZER.replace("half-range", "in-file").replace("/ 2", "/ 4")
    path.write_text("import ray_test_own_quantizer  # noqa: F401\n" + in_file + path.read_text())
    experiment = load_experiment(path)
    local = run_experiment(experiment, tmp_path / "local", wandb=OFF, progress=False)
    on_ray = run_experiment(experiment, tmp_path / "ray", executor="ray", wandb=OFF, progress=False)
    assert len(on_ray) == 3 and on_ray["score"].nunique() == 3
    key = "config_hash"
    pd.testing.assert_frame_equal(
        local[METRICS].sort_values(key).reset_index(drop=True),
        on_ray[METRICS].sort_values(key).reset_index(drop=True),
    )
    assert os.environ.get("HOME") != "" and "RAY_USAGE_STATS_ENABLED" not in os.environ


def test_points_with_the_same_shapes_share_the_compiled_forward():
    """One integer and one fake forward per structure; GPTQ's fake forward alone is its own
    (it runs the codes GPTQ chose, not the float weights rounded)."""
    _forward.clear_cache()  # counted from here, whatever other tests compiled before
    point = {"task": "digits-mlp", "seed": 0, "quantizer": "minmax", "group_size": 16}
    evaluate("digits-mlp", recipe_of(point))
    compiled = _forward._cache_size()
    assert compiled == 2
    for quantizer in ("percentile", "mse"):
        evaluate("digits-mlp", recipe_of({**point, "quantizer": quantizer}))
    assert _forward._cache_size() == compiled
    evaluate("digits-mlp", recipe_of({**point, "quantizer": "gptq"}))
    assert _forward._cache_size() == compiled + 1
