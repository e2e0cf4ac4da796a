"""Sweep grids, zipped axes, filters, hashes and the validation of experiment files."""

import sys
import textwrap
import types
from pathlib import Path

import pytest

from q4lab.cli import main
from q4lab.sweep import ResultsStore, Sweep, config_hash, load_experiment, recipe_of
from q4lab.sweep.fields import with_defaults


def test_grid_zip_and_filter_expand_in_order():
    sweep = Sweep(
        name="s",
        grid={"task": ["digits-mlp"], "bits": [2, 4], "seed": [0, 1]},
        zipped=[{"quantizer": ["minmax", "gptq"], "options": [{}, {"act_order": True}]}],
        where=lambda p: not (p["bits"] == 2 and p["quantizer"] == "gptq"),
    )
    points = sweep.points()
    assert len(points) == 2 * 2 * 2 - 2
    assert points[0] == {**points[0], "task": "digits-mlp", "bits": 2, "seed": 0}
    assert {(p["quantizer"], str(p["options"])) for p in points} == {
        ("minmax", "{}"),
        ("gptq", "{'act_order': True}"),
    }
    assert all(p["group_size"] == 0 and p["act_bits"] == 16 for p in points)  # defaults filled
    assert len({config_hash(p) for p in points}) == len(points)


def test_config_hash_is_stable_and_counts_defaults():
    explicit = {"task": "digits-mlp", "bits": 4, "group_size": 0, "options": {"b": 1, "a": 2}}
    implicit = {"task": "digits-mlp", "options": {"a": 2, "b": 1}}
    assert config_hash(explicit) == config_hash(implicit)
    assert config_hash(implicit) != config_hash({**implicit, "seed": 1})
    assert len(config_hash(implicit)) == 16


def test_point_recipe():
    recipe = recipe_of(
        {
            "task": "t",
            "quantizer": "gptq",
            "options": {"act_order": True},
            "bits": 3,
            "group_size": 32,
            "act_bits": 4,
            "sequential": False,
        }
    )
    rule = recipe.rules[0]
    assert rule.weight.bits == 3 and rule.weight.group_size == 32
    assert rule.act.bits == 4 and rule.act.mode == "dynamic" and not recipe.sequential
    assert recipe.fields()["quantizer"] == "gptq(act_order=True)"
    assert len(recipe.rules) == 1 and "recipe_rules" not in recipe.fields()
    point = {"task": "t", "bits": 4}
    assert config_hash({**point, "rules": []}) == config_hash(point)  # published names kept
    assert config_hash({**point, "symmetric_grid": "max"}) == config_hash(point)
    full = {**point, "symmetric_grid": "half_step"}
    assert config_hash(full) != config_hash(point)
    assert recipe_of(full).rules[0].weight.symmetric_grid == "half_step"
    assert recipe_of(full).fields()["symmetric_grid"] == "half_step"
    with pytest.raises(ValueError, match=r"symmetric_grid='half_step' is invalid; allowed: 'max'"):
        recipe_of({**full, "symmetric": False})
    inherited = r"rules\[0\]: .*inherited from the point: \{'symmetric_grid': 'half_step'\}"
    with pytest.raises(ValueError, match=inherited):  # the rule did not name the grid
        recipe_of({**full, "rules": [{"pattern": "head", "symmetric": False}]})
    mixed = recipe_of({**point, "rules": [{"pattern": "head", "bits": 8, "act_bits": 8}]})
    head, rest = mixed.rules
    assert (head.pattern, head.weight.bits, head.act.bits) == ("head", 8, 8)
    assert (rest.pattern, rest.weight.bits, rest.act) == (".*", 4, None)
    gptq = {"task": "t", "quantizer": "gptq", "options": {"act_order": True}}
    (head, _) = recipe_of({**gptq, "rules": [{"pattern": "head", "quantizer": "minmax"}]}).rules
    assert (head.quantizer, head.options) == ("minmax", ())  # not gptq's options
    with pytest.raises(ValueError, match=r"'quantizer': None keeps the layers float; allowed"):
        recipe_of({**point, "rules": [{"pattern": "head", "quantizer": None, "bits": 8}]})
    assert config_hash({**point, "rules": ()}) == config_hash(point)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"task": ["digits-mlp"], "bitz": [4]}, r"unknown field 'bitz' \(did you mean 'bits'\?\)"),
        ({"bits": [4]}, r"no 'task' field"),
        ({"task": "digits-mlp"}, r"'task'='digits-mlp' is invalid; allowed: a non-empty list"),
    ],
)
def test_bad_sweeps_name_the_field(grid, message):
    with pytest.raises(ValueError, match=message):
        Sweep(name="bad", grid=grid)


BAD_FILES = {
    "unknown quantizer": (
        '"quantizer": ["gptqq"]',
        r"unknown quantizer 'gptqq'; registered: awq, gptq",
    ),
    "bad group size": ('"group_size": [7]', r"group_size=7 does not divide.*allowed group sizes"),
    "typo in a field": ('"act_bit": [4]', r"unknown field 'act_bit' \(did you mean 'act_bits'"),
    "unknown task": ('"seed": [0]', None),
    "bad option": ('"options": [{"act_oder": True}], "quantizer": ["gptq"]', r"act_oder"),
    "options not a dict": (
        '"options": ["act_order=True"], "quantizer": ["gptq"]',
        r"options='act_order=True' is invalid; allowed: a dict, e.g. \{'act_order': True\}",
    ),
    "bad act bits": ('"act_bits": [1]', r"act_bits=1 is invalid; allowed: an int in 2..8, or 16"),
    # at float activations too: the typo would make a new point that reruns the float one
    "typo in act mode": (
        '"act_mode": ["dynamc"]',
        r"act_mode='dynamc' .* allowed: dynamic, static",
    ),
    "typo in act clipping": (
        '"act_clipping": ["percentle"]',
        r"act_clipping='percentle' is invalid; allowed: minmax, mse, percentile",
    ),
    "typo in a rule": (
        '"rules": [[{"pattern": "Dense_0", "bit": 8}]]',
        r"rules\[0\]: unknown field 'bit' \(did you mean 'bits'\?\); allowed: pattern, quantizer",
    ),
    "bad value in a rule": (
        '"rules": [[{"pattern": "Dense_0", "group_size": 7}]]',
        r"recipe rule 0 \(pattern 'Dense_0'\), layer 'Dense_0': QuantSpec.group_size=7 does not",
    ),
    "budget groups without the point's": (
        '"bits_budget": [3.5], "group_size": [16], "budget_groups": [[0, 32]]',
        r"group_size=16 is invalid with budget_groups=\[0, 32\]; allowed: one of the group sizes",
    ),
    "budget with a sequential-only quantizer": (  # the sensitivity's candidates are not
        '"bits_budget": [3.5], "quantizer": ["gptq"], "options": [{"float_target": True}]',
        r"bits_budget=3.5 is invalid with this point: .* at W2 from the float model's inputs "
        r"\(sequential=False\), and then .*fits the float model's outputs",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_experiment_files_fail_before_anything_is_written(tmp_path, capsys, case):
    field, message = BAD_FILES[case]
    task = "'no-such-task'" if case == "unknown task" else "'digits-mlp'"
    path = tmp_path / "bad.py"
    path.write_text(
        textwrap.dedent(
            f"""
            from q4lab.sweep import Sweep
            sweep = Sweep(name="bad", grid={{"task": [{task}], {field}}})
            """
        )
    )
    message = message or r"task='no-such-task' is unknown; allowed: charlm, .*digits-mlp"
    with pytest.raises(ValueError, match=message) as err:
        load_experiment(path)
    assert str(path) in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--results", str(tmp_path / "results")])
    assert exit_.value.code == 2
    assert str(path) in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # nothing written


def write_sweep(directory, grid: str):
    path = directory / "ok.py"
    path.write_text(f"from q4lab.sweep import Sweep\nsweep = Sweep(name='ok', grid={grid})\n")
    return path


def test_a_results_path_that_cannot_hold_the_table_fails_before_a_point_runs(tmp_path, capsys):
    path = write_sweep(tmp_path, "{'task': ['digits-mlp'], 'bits': [4]}")
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--results", str(tmp_path / "afile"), "--no-wandb"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"--results '{tmp_path / 'afile'}' cannot hold" in err and "Not a directory" in err


def test_an_interrupted_run_says_what_is_saved_and_how_to_resume(tmp_path, capsys, monkeypatch):
    import q4lab.sweep

    path = write_sweep(tmp_path, "{'task': ['digits-mlp'], 'bits': [3, 4]}")
    results = tmp_path / "results"

    def one_point_then_ctrl_c(experiment, root, **kwargs):
        ResultsStore(Path(root) / experiment.name).append({"config_hash": experiment.hashes[0]})
        raise KeyboardInterrupt

    monkeypatch.setattr(q4lab.sweep, "run_experiment", one_point_then_ctrl_c)
    ResultsStore(results / "ok").append({"config_hash": "of-an-earlier-grid"})
    assert main(["run", str(path), "--results", str(results), "--no-wandb"]) == 130
    out, err = capsys.readouterr()
    assert f"Note: 1 row in {results / 'ok' / 'runs.parquet'} not among the points of" in out
    assert f"Interrupted: 1 of 2 points are saved in {results / 'ok' / 'runs.parquet'}" in err
    assert f"To run the rest: q4lab run {path} --results {results} --no-wandb\n" in err  # its flags


def test_a_point_that_fails_is_named_with_what_is_saved(tmp_path, capsys, monkeypatch):
    import q4lab.sweep.runner

    def third_bit_fine_fourth_fails(point, progress=False):
        if point["bits"] == 4:
            raise TypeError("a bug in one's own quantizer")
        return {"score": 1.0}

    monkeypatch.setattr(q4lab.sweep.runner, "evaluate_point", third_bit_fine_fourth_fails)
    path = write_sweep(tmp_path, "{'task': ['digits-mlp'], 'bits': [3, 4]}")
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--no-wandb", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err  # not a configuration error: where it failed helps
    assert (
        "q4lab run: a point failed (task='digits-mlp', seed=0, quantizer='minmax', bits=4, "
        "group_size=0, act_bits=16): TypeError: a bug in one's own quantizer" in err
    )
    assert f"1 of 2 points are saved in {results / 'ok' / 'runs.parquet'}" in err
    assert (
        f"the same command runs the rest: q4lab run {path} --results {results} --no-wandb "
        "--no-progress"
    ) in err


def test_rows_made_by_a_quantizer_whose_defaults_changed_are_pointed_out(
    tmp_path, capsys, monkeypatch, task_cache
):
    from q4lab.quantizers import base, get_quantizer, quantizer_identity

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # forgotten after the test
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_experiment adds tmp_path
    module = tmp_path / "changing_quantizer.py"
    source = (
        "import dataclasses\n"
        "from q4lab.quantizers import register\n"
        "from q4lab.quantizers.percentile import Percentile\n"
        "@register\n@dataclasses.dataclass(frozen=True, kw_only=True)\n"
        "class Changing(Percentile):\n    name = 'changing'\n    percentile: float = {}\n"
    )
    module.write_text(source.format(99.0))
    path = write_sweep(tmp_path, "{'task': ['digits-mlp'], 'quantizer': ['changing']}")
    path.write_text("import changing_quantizer  # noqa: F401\n" + path.read_text())
    results = str(tmp_path / "results")
    assert main(["run", str(path), "--results", results, "--no-wandb", "--no-progress"]) == 0
    table = ResultsStore(tmp_path / "results" / "ok").read()
    assert table["quantizer_identity"][0].startswith("Changing(percentile=99.0) source sha256:")
    capsys.readouterr()
    nested = quantizer_identity(get_quantizer("gptq", clipping="changing"))
    assert nested.startswith("GPTQ(") and "[Changing(percentile=99.0) source sha256:" in nested
    assert quantizer_identity(get_quantizer("gptq", clipping="mse")).endswith(")")  # q4lab's own

    # in a fresh process (nothing registered but q4lab's), reproduce runs the file first
    monkeypatch.setattr(
        base, "_REGISTRY", {n: c for n, c in base._REGISTRY.items() if n != "changing"}
    )
    monkeypatch.delitem(sys.modules, "changing_quantizer")
    assert main(["reproduce", f"{results}/ok", "--experiment", str(path), "--rows", "0"]) == 0
    assert "1 of 1 rows rerun: reproduced" in capsys.readouterr().out

    module.write_text(source.format(95.0))  # the researcher edits the default
    monkeypatch.delitem(sys.modules, "changing_quantizer")
    assert main(["run", str(path), "--results", results, "--no-wandb", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "were made by a quantizer whose code or defaults have changed since" in out
    assert "Changing(percentile=99.0) source sha256:" in out and "(1 row) -> " in out
    assert "Changing(percentile=95.0) source sha256:" in out
    assert "All 1 points of 'ok' are already in" in out


def test_a_plugin_module_registers_quantizers_for_every_command(tmp_path, capsys, monkeypatch):
    from q4lab.quantizers import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # forgotten after the test
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugin_test_quantizer.py").write_text(
        "import dataclasses\n"
        "from q4lab.quantizers import register\n"
        "from q4lab.quantizers.minmax import MinMax\n"
        "@register\n@dataclasses.dataclass(frozen=True)\n"
        "class Mine(MinMax):\n    name = 'plugin-test'\n"
    )
    assert main(["--plugin", "plugin_test_quantizer", "ls"]) == 0
    out = capsys.readouterr().out
    assert "plugin-test" in out  # and, run outside the repository, where to find experiments
    assert f"none in 'experiments' (no such folder in {tmp_path}; --experiments DIR)" in out
    with pytest.raises(SystemExit) as exit_:
        main(["--plugin", "no_such_module", "ls"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert (
        "--plugin no_such_module: No module named 'no_such_module' (searched: the installed " in err
    )
    assert f"and the current folder, {Path.cwd()})" in err


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "sweep = Sweep(name='bad', grid={'task': ['digits-mlp']",
            r"bad\.py, line 2: '{' was never closed",
        ),
        (
            "sweep = Sweep(name='bad', grid={'task': ['digits-mlp']}, filter=None)",
            r"bad\.py, line 2: TypeError: .*unexpected keyword argument 'filter'",
        ),
        (
            "sweep = Sweep(name='bad', grid={'task': ['digits-mlp']}, where=lambda p: p['bit'])",
            r"bad\.py: Sweep 'bad': where\(point\) raised KeyError: 'bit'; a point has the fields "
            "task, seed",
        ),
    ],
)
def test_an_experiment_files_own_errors_name_its_line(tmp_path, body, message):
    path = tmp_path / "bad.py"
    path.write_text(f"from q4lab.sweep import Sweep\n{body}\n")
    with pytest.raises(ValueError, match=message):
        load_experiment(path)


def test_a_corrupt_results_table_is_named(tmp_path):
    store = ResultsStore(tmp_path)
    store.path.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=f"{store.path} is not a readable parquet table"):
        store.read()


def test_a_wandb_run_holds_every_field_and_text_as_config_and_the_numbers_as_summary(
    tmp_path, monkeypatch
):
    from q4lab.sweep.runner import point_row
    from q4lab.sweep.tracking import WandbLogger, WandbSettings

    calls, summary = {}, {}

    class Run:
        def __init__(self):
            self.summary = summary

        def finish(self):
            calls["finished"] = True

    monkeypatch.setitem(
        sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: calls.update(kw) or Run())
    )
    point = with_defaults({"task": "digits-mlp", "qat_steps": 20, "qat_method": "ste"})
    record = {"recipe": "minmax W4 A16", "training": "qat ste", "score": 0.9, "total_bytes": 7}
    WandbLogger(WandbSettings(), "exp", tmp_path).log(point_row(point, record, "exp"))
    config = calls["config"]
    assert {"qat_method", "qat_steps", "rotation", "rules", "training", "recipe"} <= set(config)
    assert config["qat_method"] == "ste" and config["rules"] == "[]"  # as the table stores it
    assert summary == {"score": 0.9, "total_bytes": 7}
    assert calls["name"].startswith("minmax W4 A16 · seed 0 · ") and calls["finished"]


def test_a_file_without_a_sweep(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(ValueError, match=r"defines no `sweep = Sweep\(...\)`"):
        load_experiment(path)


@pytest.mark.parametrize("name", ["quickstart", "digits", "mnist1d", "charlm"])
def test_published_tables_hold_every_point_of_their_experiment(name):
    """Fields added later (quantization-aware training) leave a post-training point's name
    unchanged, so every published table still knows which points it holds."""
    from q4lab.sweep.runner import missing_points

    experiment = load_experiment(f"experiments/{name}.py")
    assert missing_points(experiment, "results") == 0
    point = experiment.points[0]
    assert config_hash({**point, "qat_method": "ste"}) == experiment.hashes[0]  # steps = 0
    assert config_hash({**point, "qat_steps": 10}) != experiment.hashes[0]


def test_qat_fields_are_checked_with_the_allowed_values():
    from q4lab.sweep.fields import validate_point, with_defaults

    with pytest.raises(ValueError, match=r"qat_loss='task' is invalid for task 'minilm'"):
        validate_point(with_defaults({"task": "minilm", "qat_steps": 5}))
    with pytest.raises(ValueError, match=r"qat_method='sgd' is invalid; allowed"):
        validate_point(with_defaults({"task": "digits-mlp", "qat_steps": 5, "qat_method": "sgd"}))
    with pytest.raises(ValueError, match=r"qat_steps=-1 is invalid"):
        validate_point(with_defaults({"task": "digits-mlp", "qat_steps": -1}))


def test_calib_padding_is_a_late_field_checked_against_the_task():
    """Excluding padding from calibration: a field whose default keeps the published rows'
    hashes, refused for a task whose inputs are never padded."""
    from q4lab.sweep.fields import validate_point, with_defaults

    point = {"task": "minilm", "quantizer": "gptq"}
    assert config_hash({**point, "calib_padding": "include"}) == config_hash(point)
    assert config_hash({**point, "calib_padding": "exclude"}) != config_hash(point)
    validate_point(with_defaults({**point, "calib_padding": "exclude"}))
    with pytest.raises(ValueError, match=r"'exclude' is invalid for task 'digits-mlp'.*'include'"):
        validate_point(with_defaults({"task": "digits-mlp", "calib_padding": "exclude"}))
    with pytest.raises(ValueError, match=r"calib_padding='none' is invalid; allowed: include"):
        validate_point(with_defaults({**point, "calib_padding": "none"}))


def test_points_that_differ_only_in_fields_that_change_nothing_run_once(tmp_path, capsys):
    """act_bits [16, 4] x act_mode [dynamic, static] ran the weight-only point twice per seed
    under two hashes; the report then counted 6 seeds of 3 and narrowed its spread."""
    import pandas as pd

    from q4lab.plots import aggregate
    from q4lab.report import report

    grid = "{'task': ['digits-mlp'], 'act_bits': [16, 4], 'act_mode': ['dynamic', 'static'], "
    path = write_sweep(tmp_path, grid + "'seed': [0, 1]}")
    experiment = load_experiment(path)
    assert len(experiment.points) == 6 and len(experiment.merged) == 2
    assert experiment.merged[0].startswith("act_mode='static' of task='digits-mlp', seed=0,")
    assert experiment.merged[0].endswith("runs as the one with act_mode='dynamic'")
    results = str(tmp_path / "results")
    assert main(["run", str(path), "--results", results, "--no-wandb", "--no-progress"]) == 0
    assert "Note: 2 points of" in capsys.readouterr().out
    table = ResultsStore(tmp_path / "results" / "ok").read()
    assert len(table) == 6
    # a table written before, holding the twin rows, counts each seed once
    twins = pd.concat([table, table[table["act_bits"] == 16].assign(config_hash="twin")])
    points = aggregate(twins, "bits_per_weight", "score")
    assert points["seeds"].tolist() == [2, 2, 2]
    # a column asked to tell rows apart keeps them apart (here: the same rows on two devices)
    devices = pd.concat([table.assign(device="cpu"), table.assign(device="gpu")])
    assert len(aggregate(devices, "bits_per_weight", "score", extra=["device"])) == 6
    assert "6 runs (2 more: one configuration and seed again, counted once)" in report(twins)
    # bits beside a budget: every value but the narrowest width merges, 4 (the default) too
    budget = load_experiment(
        write_sweep(tmp_path, "{'task': ['digits-mlp'], 'bits': [2, 3, 4], 'bits_budget': [3.5]}")
    )
    assert [p["bits"] for p in budget.points] == [2] and len(budget.merged) == 2
    # group_size beside budget_groups: the allocation chooses every layer's group size too
    groups = "{'task': ['digits-mlp'], 'group_size': [16, 32], 'bits_budget': [3.5], "
    budget = load_experiment(write_sweep(tmp_path, groups + "'budget_groups': [[16, 32]]}"))
    assert [p["group_size"] for p in budget.points] == [16] and len(budget.merged) == 1
    # zero_point naming the quantizer's own kind: int for min-max, float for HQQ
    kinds = "{'task': ['digits-mlp'], 'symmetric': [False], 'zero_point': ['auto', 'int'], "
    for quantizer, kept in (("minmax", 1), ("hqq", 2)):  # hqq: int is refused, float merges
        zero = kinds.replace("'int'", "'float'") if quantizer == "hqq" else kinds
        twins = load_experiment(write_sweep(tmp_path, zero + f"'quantizer': ['{quantizer}']}}"))
        assert len(twins.points) == 1 and len(twins.merged) == 1, (quantizer, kept)
    # a rule inherits the point's act_mode: with one, act_mode is not inert at act_bits=16
    rule = "'rules': [[{'pattern': 'Dense_0', 'act_bits': 4}]]"
    ruled = load_experiment(write_sweep(tmp_path, grid + rule + "}"))
    assert len(ruled.points) == 4 and not ruled.merged
    with pytest.raises(ValueError, match=r"repeats points .*: point 1 is point 0 \(task="):
        load_experiment(write_sweep(tmp_path, "{'task': ['digits-mlp'], 'bits': [4, 4]}"))
