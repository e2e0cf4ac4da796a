"""Published float baselines (q4lab/baselines) and `q4lab reproduce`."""

from __future__ import annotations

import dataclasses
import functools
import platform
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from q4lab import data
from q4lab.baselines import ChecksumError, params_from_bytes, params_to_bytes, read_index
from q4lab.baselines.publish import check, cpu_flags
from q4lab.baselines.store import PUBLISHED_DIR, find_published, flatten, write_index
from q4lab.cli import main
from q4lab.manifest import manifest
from q4lab.reproduce import sample_rows
from q4lab.tasks import get_task
from q4lab.tasks.base import BaselineTraining, baseline_params

DIGITS = Path(__file__).resolve().parents[1] / "results" / "digits"  # small and fast to rerun


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("Q4LAB_CACHE", str(cache))
    monkeypatch.delenv("Q4LAB_PUBLISHED", raising=False)
    return cache


def _published_copy(directory: Path, file_name: str) -> None:
    """``directory`` holding one published file and an index listing only it."""
    directory.mkdir()
    shutil.copy(PUBLISHED_DIR / file_name, directory / file_name)
    write_index(directory, {file_name: read_index(PUBLISHED_DIR)[file_name]})


def _assert_same(a: dict, b: dict) -> None:
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        assert fa[key].dtype == fb[key].dtype and np.array_equal(fa[key], fb[key]), key


def test_file_format_round_trips_and_is_deterministic():
    params = {"Dense_0": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2)}
    data = params_to_bytes(params)
    assert params_to_bytes(params) == data  # same params, same bytes (fixed zip timestamps)
    _assert_same(params_from_bytes(data), params)
    with pytest.raises(ValueError, match="contains '/'"):
        params_to_bytes({"a/b": np.ones(1)})


def test_every_published_file_matches_its_checksum_and_this_install():
    """Every file is intact and used here, except a model trained on the standard library's
    sources (charlm) under another Python: its data differ there, so it is trained afresh."""
    rows = check()
    assert {r["file"].split("-seed")[0] for r in rows} >= {"digits-mlp", "mnist1d-cnn"}
    assert all(r["checksum"] == "ok" for r in rows), rows
    index = read_index(PUBLISHED_DIR)
    for row in rows:
        entry = index[row["file"]]
        other_python = entry["produced"]["python_version"] != platform.python_version()
        if not (other_python and "stdlib sources of CPython" in entry["key"]):
            assert row["used here"] == "yes", row


def test_published_baseline_is_loaded_and_equals_training_here(empty_cache):
    training = get_task("digits-mlp").baseline_training(0)
    loaded = baseline_params(training)
    assert not empty_cache.exists()  # loaded from the published file, nothing trained or cached
    entry = read_index(PUBLISHED_DIR)[training.file_name]
    produced, here = entry["produced"], manifest()
    # (the digits MLP also trains bit for bit alike with XLA capped at AVX2 on an AVX-512 CPU)
    if produced["cpu_flags"] != " ".join(cpu_flags()) or any(
        produced[k] != here[k] for k in ("jax_version", "jaxlib_version")
    ):
        pytest.skip("published on another CPU type or XLA: training need not agree bit for bit")
    _assert_same(loaded, training.train(False))


def test_corrupted_published_file_is_a_clear_error(tmp_path, empty_cache, monkeypatch):
    training = get_task("digits-mlp").baseline_training(0)
    published = tmp_path / "published"
    _published_copy(published, training.file_name)
    data = bytearray((published / training.file_name).read_bytes())
    data[-100] ^= 1
    (published / training.file_name).write_bytes(bytes(data))
    monkeypatch.setenv("Q4LAB_PUBLISHED", str(published))
    with pytest.raises(ChecksumError, match=rf"{training.file_name} is corrupt.*sha256"):
        get_task("digits-mlp").baseline(0)
    assert not empty_cache.exists()  # never silently retrained
    assert check(directory=published)[0]["checksum"] == "ChecksumError"
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", str(DIGITS), "--rows", "0", "--no-progress"])
    assert exit_.value.code == 2  # the CLI's one-line error


def test_provenance_mismatch_is_not_used(tmp_path, empty_cache, monkeypatch):
    real = get_task("digits-mlp").baseline_training(0)
    published = tmp_path / "published"
    _published_copy(published, real.file_name)
    assert find_published(real.file_name, real.key, published) is not None
    # same file name, other key in the index (a digest collision): not used
    entry = read_index(published)[real.file_name]
    write_index(published, {real.file_name: entry | {"key": real.key + " (other data)"}})
    assert find_published(real.file_name, real.key, published) is None

    monkeypatch.setenv("Q4LAB_PUBLISHED", str(PUBLISHED_DIR))
    trained = {"Dense_0": {"kernel": np.full((2, 2), 7.0, np.float32)}}
    other = BaselineTraining(
        task="digits-mlp", seed=0, key=real.key + " changed", train=lambda progress: trained
    )
    assert other.file_name != real.file_name
    _assert_same(baseline_params(other), trained)  # trained, not the published file
    assert (empty_cache / "baselines" / other.file_name).exists()  # and cached
    _assert_same(baseline_params(other), trained)  # read back from the cache

    monkeypatch.setenv("Q4LAB_PUBLISHED", "none")  # published files switched off: train
    calls = []
    switched_off = BaselineTraining(
        task="digits-mlp",
        seed=0,
        key=real.key,
        train=lambda progress: calls.append(1) or trained,
    )
    _assert_same(baseline_params(switched_off), trained)
    assert calls == [1]


def test_another_training_split_is_another_baseline():
    """A published baseline trained on one split is never loaded for another: its training set
    would hold the other split's calibration or test examples."""
    task = get_task("digits-mlp")
    published = task.baseline_training(0).file_name
    assert published in read_index(PUBLISHED_DIR)
    for changed in (dict(calib_size=256), dict(test_fraction=0.2)):
        other = dataclasses.replace(task, data=functools.partial(data.digits, **changed))
        assert other.baseline_training(0).file_name != published, changed

    def same_words(seed: int) -> data.Splits:  # a data function whose text misses the change
        return dataclasses.replace(
            data.digits(seed, calib_size=256), provenance=data.digits(seed).provenance
        )

    unnamed = dataclasses.replace(task, data=same_words)
    assert unnamed.baseline_training(0).file_name != published


def test_sample_is_spread_over_quantizers():
    table = pd.read_parquet(DIGITS / "runs.parquet")
    rows = sample_rows(table, 4, seed=0)
    assert len(set(rows)) == 4 and rows == sample_rows(table, 4, seed=0)
    assert table.iloc[rows]["quantizer"].nunique() == 4


def test_reproduce_a_published_row_exactly_and_flag_a_doctored_one(tmp_path, capsys, empty_cache):
    table = pd.read_parquet(DIGITS / "runs.parquet")
    pick = table.query("quantizer == 'minmax' and group_size == 0 and act_bits == 16 and seed == 0")
    row = int(pick.index[0])
    # run metadata is shown, never compared: here another CPU's name and BLAS kernels, or none
    elsewhere = tmp_path / "digits"
    elsewhere.mkdir()
    table.assign(cpu=None, blas="openblas 0.3.30 SkylakeX").assign(
        cpu=lambda t: t["cpu"].where(t.index != row, "Other CPU, x86_64 AVX2")
    ).to_parquet(elsewhere / "runs.parquet", index=False)
    assert main(["reproduce", str(elsewhere), "--rows", str(row), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"1 of {len(table)} rows rerun: reproduced" in out and "DIFFERS" not in out
    assert "cpu Other CPU, x86_64 AVX2; blas openblas 0.3.30 SkylakeX" in out
    here = next(line for line in out.splitlines() if line.startswith("here:"))
    kernels = manifest()["blas"]  # this machine's ("" where SciPy's BLAS is not known)
    assert here.endswith(f"; blas {kernels}") if kernels else "blas" not in here
    assert not empty_cache.exists()  # the baseline came from the published file

    doctored = tmp_path / "quickstart"
    doctored.mkdir()
    table.loc[row, "score"] += 0.01
    table.loc[row, "total_bytes"] += 1
    table.loc[row, "eval_seconds"] += 100  # a wall time: never compared
    table.to_parquet(doctored / "runs.parquet", index=False)
    args = ["reproduce", str(doctored), "--rows", str(row), "--no-progress", "--tol", "0.02"]
    assert main(args) == 1  # the score is within --tol, the size is never
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("| total_bytes") and "DIFFERS" in line for line in lines)
    assert any(line.startswith("| score ") and "| ok" in line for line in lines)
    assert any(
        line.startswith("A size that differs is a change in what is stored") for line in lines
    )
    assert not any(line.startswith("| eval_seconds") for line in lines)


def test_reproduce_compares_nan_inf_and_the_tolerance_as_numbers():
    from q4lab.reproduce import _column

    def compare(column, old, new, tol=0.0):
        published = [{"metric": "accuracy", column: old}]
        return _column(column, published, [{"metric": "accuracy", column: new}], ["#0"], tol)

    # a score of NaN is a value (a run that diverged): a number now differs, NaN again is equal
    assert not compare("score", float("nan"), 0.97)["ok"]
    assert not compare("accuracy", float("nan"), 0.97)["ok"]
    assert compare("score", float("nan"), float("nan"))["ok"]
    assert compare("qat_loss_start", float("nan"), 0.5) is None  # a column added since
    assert compare("score", float("inf"), float("inf"))["ok"]  # inf - inf is NaN
    assert not compare("score", float("inf"), 1.0)["ok"]
    assert compare("score", 0.904, 0.905, tol=0.001)["ok"]  # 0.0010000000000000009 apart
    assert not compare("score", 0.904, 0.9051, tol=0.001)["ok"]


def test_a_row_without_its_experiment_file_names_the_missing_file(tmp_path, capsys):
    table = pd.read_parquet(DIGITS / "runs.parquet").head(1)
    table.assign(experiment="gone", config_hash="0" * 16).to_parquet(tmp_path / "runs.parquet")
    with pytest.raises(SystemExit):
        main(["reproduce", str(tmp_path), "--rows", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert "experiments/gone.py does not exist; pass --experiment <the file that ran it>" in err


def test_reproduce_names_a_trained_or_mixed_row_as_such():
    from q4lab.reproduce import _shown
    from q4lab.sweep.fields import with_defaults

    plain = with_defaults({"task": "digits-mlp"})
    assert set(_shown({}, plain)) == {"task", "seed", "quantizer", "bits", "group_size", "act_bits"}
    trained = _shown({}, with_defaults({"task": "digits-mlp", "qat_steps": 20}))
    assert (trained["qat_steps"], trained["qat_method"]) == (20, "lsq")
    assert (
        _shown({}, with_defaults({"task": "digits-mlp", "bits_budget": 2.5}))["bits_budget"] == 2.5
    )


def test_publish_keeps_a_differing_published_file_unless_replaced(tmp_path):
    from q4lab.baselines.publish import publish
    from q4lab.baselines.store import add_published

    training = get_task("digits-mlp").baseline_training(0)
    published = tmp_path / "published"
    _published_copy(published, training.file_name)
    entry = read_index(published)[training.file_name]
    other = params_from_bytes((PUBLISHED_DIR / training.file_name).read_bytes())
    other["Dense_0"]["bias"] = other["Dense_0"]["bias"] + 1.0  # as if trained on another CPU
    doctored = add_published(published, training.file_name, other, entry)["sha256"]
    with pytest.raises(ValueError, match=r"gave other parameters.*pass --replace"):
        publish("digits-mlp", [0], directory=published, progress=False)
    assert read_index(published)[training.file_name]["sha256"] == doctored  # kept
    publish("digits-mlp", [0], directory=published, replace=True, progress=False)
    assert read_index(published)[training.file_name]["sha256"] != doctored
