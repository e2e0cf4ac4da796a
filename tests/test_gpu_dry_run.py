"""benchmarks/gpu_dry_run.py: an experiment's quantized matmuls, recorded here and checked as a
GPU would run them (lowered for CUDA, kernels interpreted)."""

import importlib.util
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

import q4lab.layer_quant
from q4lab.ops import autotune, int_matmul, w4a16_matmul
from q4lab.sweep import load_experiment

_PATH = Path(__file__).parents[1] / "benchmarks" / "gpu_dry_run.py"
_SPEC = importlib.util.spec_from_file_location("gpu_dry_run", _PATH)
gpu_dry_run = sys.modules["gpu_dry_run"] = importlib.util.module_from_spec(_SPEC)  # dataclasses
_SPEC.loader.exec_module(gpu_dry_run)

EXPERIMENT = """
from q4lab.sweep import Sweep

sweep = Sweep(
    name="dry",
    grid={"task": ["digits-mlp"], "bits": [3, 4], "group_size": [0, 32], "act_bits": [16, 4],
          "seed": [0, 1]},
    zipped=[{"quantizer": ["minmax", "gptq"], "options": [{}, {"act_order": True}]}],
)
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("experiments") / "dry.py"
    path.write_text(EXPERIMENT)
    return path


def test_one_point_per_structure_of_the_4_bit_points(experiment):
    points = load_experiment(str(experiment)).points
    chosen = gpu_dry_run.structures(points)
    assert len(points) == 32
    assert {(p["group_size"], p["act_bits"]) for p in chosen} == {
        (0, 16),
        (0, 4),
        (32, 16),
        (32, 4),
    }
    assert len(chosen) == 4
    assert all(p["bits"] == 4 and p["seed"] == 0 and p["quantizer"] == "minmax" for p in chosen)
    assert gpu_dry_run.structures([points[0] | {"bits": 4, "bits_budget": 3.5}]) == []


def test_recording_sees_the_models_calls_and_puts_the_ops_back():
    calls = {}
    x, qt = jnp.ones((3, 64)), autotune.stand_in(_weight())
    with gpu_dry_run.recording(calls, "here"):
        q4lab.layer_quant.w4a16_matmul(x, qt)
        q4lab.layer_quant.w4a16_matmul(x, qt)  # the same call again: one entry
    assert q4lab.layer_quant.w4a16_matmul is w4a16_matmul
    assert q4lab.layer_quant.int_matmul is int_matmul
    (call,) = calls.values()
    assert (call.op, call.m, call.sources) == ("w4a16_matmul", 3, {"here"})
    assert call.key == "w4a16 64x256 g16 float16 sym rows m3 float32"


def test_a_path_that_disagrees_with_the_reference_is_flagged(monkeypatch):
    call = gpu_dry_run.Call(
        op="w4a16_matmul",
        qt=autotune.stand_in(_weight()),
        m=8,
        dtype=jnp.dtype("float32"),
        scale_rows=None,
        impl="auto",
    )
    assert gpu_dry_run.check(call)["flag"] == ""
    wrong = lambda *a: w4a16_matmul(*a[:-1], autotune.stand_in(a[-1], seed=1))  # noqa: E731
    monkeypatch.setattr(gpu_dry_run, "_as_run", lambda path, op, on_gpu: wrong)
    row = gpu_dry_run.check(call)
    assert row["max err"] > 0.1 and row["flag"] == "FAIL"


def test_an_experiments_calls_lower_for_cuda_and_agree(experiment, tmp_path, monkeypatch):
    out = tmp_path / "dry.md"
    monkeypatch.setattr(sys, "argv", ["gpu_dry_run.py", str(experiment), "--out", str(out)])
    assert gpu_dry_run.main() == 0
    text = out.read_text()
    # digits-mlp 64-256-128-10: W4A16 and W4A4 at each layer, per-channel and g32, and with
    # GPTQ's act-order permutation (the experiment's GPTQ uses it)
    assert text.startswith("24 distinct quantized matmuls of 4 points")
    for call in (
        "w4a16 64x256 g32",
        "w4a4 256x128 per-channel",
        "w4a4 128x10 g32 float16 sym rows perm",
    ):
        assert call in text
    assert "| pallas " in text  # W4A4 g32 at 256x128: the Triton kernel, interpreted here
    assert "FAIL" not in text


def _weight():
    from q4lab.core import QuantSpec
    from q4lab.quantizers import get_quantizer

    w = jnp.linspace(-1, 1, 64 * 256).reshape(64, 256)
    return get_quantizer("minmax").quantize(
        w, QuantSpec(bits=4, group_size=16, scale_dtype="float16")
    )
