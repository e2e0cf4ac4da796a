"""What guards a sweep's results: one writer per results directory, a name that stays inside
--results, tables checked before a point runs, wandb runs logged even across an interruption,
and Ctrl-C that stops the sweep even where a callback swallows it."""

import os
import signal

import pytest

from q4lab.cli import main
from q4lab.sweep import ResultsStore, Sweep, WandbSettings, load_experiment, run_experiment
from q4lab.sweep.runner import _interrupt_between_points


def _experiment(tmp_path, grid="{'task': ['digits-mlp'], 'bits': [4]}", name="guard"):
    path = tmp_path / f"{name}.py"
    path.write_text(f"from q4lab.sweep import Sweep\nsweep = Sweep(name={name!r}, grid={grid})\n")
    return path


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../escaped", "", ".hidden", 5])
def test_a_sweep_name_is_a_folder_name(name):
    with pytest.raises(ValueError, match=r"Sweep name=.* is invalid; allowed: letters, digits"):
        Sweep(name=name, grid={"task": ["digits-mlp"]})


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    experiment = load_experiment(_experiment(tmp_path))
    off = WandbSettings(mode="disabled")
    with (
        ResultsStore(tmp_path / "results" / "guard").writer(),
        pytest.raises(ValueError, match=rf"being written by another q4lab run \(pid {os.getpid()}"),
    ):
        run_experiment(experiment, tmp_path / "results", wandb=off, progress=False)
    assert not (tmp_path / "results" / "guard" / "runs.parquet").exists()


def test_an_unreadable_layer_table_or_directory_fails_before_a_point_runs(tmp_path, capsys):
    path = _experiment(tmp_path)
    directory = tmp_path / "results" / "guard"
    directory.mkdir(parents=True)
    (directory / "layers.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(SystemExit):
        main(["run", str(path), "--results", str(tmp_path / "results"), "--no-wandb"])
    assert f"{directory / 'layers.parquet'} is not a readable parquet table" in (
        capsys.readouterr().err
    )
    assert not (directory / "runs.parquet").exists()
    (directory / "layers.parquet").unlink()
    if os.geteuid() != 0:  # root writes anywhere
        directory.chmod(0o555)
        with pytest.raises(SystemExit):
            main(["run", str(path), "--results", str(tmp_path / "results"), "--no-wandb"])
        assert "cannot hold the results" in capsys.readouterr().err
        directory.chmod(0o755)


def test_a_row_saved_but_not_logged_is_logged_when_the_sweep_resumes(tmp_path):
    experiment = load_experiment(_experiment(tmp_path))
    directory = tmp_path / "results" / "guard"
    store = ResultsStore(directory)
    (key,) = experiment.hashes
    store.append({"config_hash": key, "seed": 0, "recipe": "W4", "score": 0.97})
    (directory / ".wandb-pending").write_text(key)  # interrupted between saving and logging
    run_experiment(experiment, tmp_path / "results", progress=False)  # nothing left to run
    assert not (directory / ".wandb-pending").exists()
    (run,) = (directory / "wandb").glob("offline-run-*")
    assert any(run.glob("*.wandb"))


def test_options_at_the_quantizers_defaults_run_once(tmp_path):
    grid = "{'task': ['digits-mlp'], 'quantizer': ['mse'], 'options': [{}, {'p': 2.0}, {'p': 2}]}"
    experiment = load_experiment(_experiment(tmp_path, grid))
    assert len(experiment.points) == 1 and len(experiment.merged) == 2


def test_ctrl_c_stops_the_sweep_even_where_a_callback_swallowed_it():
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a shell's background job
    with _interrupt_between_points() as interrupted:
        try:  # as JAX's garbage collection hook does: "Exception ignored in ..."
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the handler runs between bytecodes
        except KeyboardInterrupt:
            pass
        with pytest.raises(KeyboardInterrupt):
            interrupted()
    assert signal.getsignal(signal.SIGINT) is before  # the handler it found, back


def test_an_own_quantizer_with_a_required_option_loads(monkeypatch):
    """Comparing options with the quantizer's defaults built it without options: TypeError."""
    import dataclasses

    from q4lab.quantizers import base
    from q4lab.quantizers.minmax import MinMax
    from q4lab.sweep.fields import inert_fields, with_defaults

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Needs(MinMax):
        name = "needs-k"
        k: float

    monkeypatch.setitem(base._REGISTRY, "needs-k", Needs)
    point = with_defaults({"task": "digits-mlp", "quantizer": "needs-k", "options": {"k": 1.0}})
    assert inert_fields(point) == []
