"""benchmarks/gpu_dry_run.py: an experiment's quantized matmuls, recorded here and checked as a
GPU would run them (lowered for CUDA, kernels interpreted)."""

import importlib.util
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

import q4lab.layer_quant
from q4lab.core import dequantize_matrix
from q4lab.ops import autotune, int_matmul, lowered_for_gpu, rounded_dots, w4a16_matmul
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
    assert {(p["group_size"], p["act_bits"]): perm for p, perm in chosen} == {
        (0, 16): False,  # GPTQ keeps no permutation for per-channel weights
        (0, 4): False,
        (32, 16): True,
        (32, 4): True,
    }
    assert all(p["bits"] == 4 and p["seed"] == 0 and p["quantizer"] == "minmax" for p, _ in chosen)
    budget = points[0] | {"bits_budget": 3.5, "budget_widths": [2, 4], "budget_groups": [0, 128]}
    assert [(p["bits"], p["group_size"]) for p, _ in gpu_dry_run.structures([budget])] == [
        (4, 0),
        (4, 128),
    ]
    assert gpu_dry_run.structures([budget | {"budget_widths": [2, 3]}]) == []
    trains = points[0] | {"bits": 4, "qat_steps": 300}
    ((point, _),) = gpu_dry_run.structures([trains, trains | {"qat_steps": 150}])
    assert point["qat_steps"] == 1  # one step records the training forward's calls


def test_a_point_field_is_structure_unless_listed_as_values_only():
    """A field added to the sweep's FIELDS splits the dry run's points until someone lists it
    in VALUE_FIELDS: this test names today's split, so adding one means deciding."""
    assert gpu_dry_run.STRUCTURE == (
        "task",
        "bits",
        "symmetric",
        "group_size",
        "zero_point",  # float zeros run the dequantized weight, not the integer kernels
        "scale_dtype",
        "act_bits",
        "act_mode",
        "act_symmetric",
        "rotation",
        "rules",
        "calib_size",
    )
    assert gpu_dry_run.QAT_STRUCTURE == ("qat_method", "qat_loss", "qat_batch_size")


@pytest.mark.parametrize(
    ("quantizer", "options", "group_size", "stores"),
    [
        ("gptq", {"act_order": True}, 128, True),
        ("gptq", {"act_order": True}, 0, False),
        ("gptq", {"act_order": True, "static_groups": True}, 128, False),
        ("gptq", {}, 128, False),
        ("awq", {"quantizer": "gptq", "quantizer_options": {"act_order": True}}, 128, True),
        ("awq", {"quantizer": "minmax"}, 128, False),
    ],
)
def test_which_points_store_an_act_order_permutation(quantizer, options, group_size, stores):
    point = {"quantizer": quantizer, "options": options, "group_size": group_size}
    assert gpu_dry_run.stores_perm(point) is stores


def test_recording_sees_the_models_calls_and_puts_the_ops_back():
    calls, seen = {}, set()
    x, qt = jnp.ones((3, 64)), autotune.stand_in(_weight())
    with gpu_dry_run.recording(calls, "here", seen):
        q4lab.layer_quant.w4a16_matmul(x, qt)
        q4lab.layer_quant.w4a16_matmul(x, qt)  # the same call again: one entry
    assert q4lab.layer_quant.w4a16_matmul is w4a16_matmul
    assert q4lab.layer_quant.int_matmul is int_matmul
    (call,) = calls.values()
    assert (call.op, call.m, call.sources) == ("w4a16_matmul", 3, {"here"})
    assert call.key == "w4a16 64x256 g16 float16 sym rows m3 float32"
    assert seen == {call.key}


def _call(m: int = 8) -> "gpu_dry_run.Call":
    return gpu_dry_run.Call(
        op="w4a16_matmul",
        qt=autotune.stand_in(_weight()),
        m=m,
        dtype=jnp.dtype("float32"),
        scale_rows=None,
        impl="auto",
    )


def test_a_path_that_disagrees_or_gives_nan_is_flagged(monkeypatch):
    assert gpu_dry_run.check(_call())["flag"] == ""
    wrong = lambda *a: w4a16_matmul(*a[:-1], autotune.stand_in(a[-1], seed=1))  # noqa: E731
    monkeypatch.setattr(gpu_dry_run, "_as_run", lambda path, op, on_gpu: wrong)
    row = gpu_dry_run.check(_call())
    assert row["max err"] > 0.1 and row["flag"] == "FAIL"
    nan = lambda *a: w4a16_matmul(*a) * jnp.nan  # noqa: E731
    monkeypatch.setattr(gpu_dry_run, "_as_run", lambda path, op, on_gpu: nan)
    assert gpu_dry_run.check(_call())["flag"] == "FAIL"


def test_a_path_that_fails_to_lower_or_to_run_is_flagged(monkeypatch):
    def refuse(*args, **kwargs):
        raise NotImplementedError("no lowering\nfor this")

    with monkeypatch.context() as patch:
        patch.setattr(gpu_dry_run, "lowered_for_gpu", refuse)
        row = gpu_dry_run.check(_call())
    assert (row["lowered"], row["flag"]) == ("NotImplementedError: no lowering", "FAIL")
    monkeypatch.setattr(gpu_dry_run, "_as_run", lambda path, op, on_gpu: refuse)
    row = gpu_dry_run.check(_call())
    assert (row["run error"], row["flag"]) == ("NotImplementedError: no lowering", "FAIL")


@pytest.mark.parametrize("precision", ["default", "high", "highest"])
def test_rounded_dots_finds_the_float32_dots_a_gpu_would_run_as_tf32(precision):
    x = jnp.ones((4, 8))
    text = lowered_for_gpu(lambda a: jnp.dot(a, a.T, precision=precision), x).as_text()
    assert len(rounded_dots(text)) == (precision != "highest")
    bf16 = lowered_for_gpu(lambda a: a @ a.T, x.astype(jnp.bfloat16)).as_text()
    assert rounded_dots(bf16) == []


def test_a_float32_dot_a_gpu_would_round_is_flagged(monkeypatch):
    rounded = lambda x, qt: x @ dequantize_matrix(qt)  # noqa: E731  (default precision)
    monkeypatch.setattr(gpu_dry_run, "_as_run", lambda path, op, on_gpu: rounded if on_gpu else op)
    row = gpu_dry_run.check(_call())
    assert (row["TF32 dots"], row["flag"]) == (1, "FAIL")


def test_an_experiments_calls_lower_for_cuda_and_agree(experiment, tmp_path, monkeypatch):
    out = tmp_path / "dry.md"
    monkeypatch.setattr(sys, "argv", ["gpu_dry_run.py", str(experiment), "--out", str(out)])
    assert gpu_dry_run.main() == 0
    text = out.read_text()
    # digits-mlp 64-256-128-10: W4A16 and W4A4 at each layer, per-channel and g32, and the g32
    # ones again with GPTQ's act-order permutation (the experiment's GPTQ keeps one there)
    assert text.startswith("18 distinct quantized matmuls of 4 points")
    for call in (
        "w4a16 64x256 g32",
        "w4a4 256x128 per-channel",
        "w4a4 128x10 g32 float16 sym rows perm",
    ):
        assert call in text
    assert "per-channel float16 sym rows perm" not in text
    # blocked, what a GPU runs for float32 activations above 64 rows (the evaluation's 360),
    # asks for float32 products
    rows = [[cell.strip() for cell in line.split("|")] for line in text.splitlines()]
    w4a16 = [
        (row[3], row[5], row[6]) for row in rows if len(row) > 6 and row[2].startswith("w4a16")
    ]
    assert w4a16 == [("blocked", "ok", "0")] * 9  # 3 layers: per-channel, g32, g32 act-order
    assert "| pallas " in text  # W4A4 g32 at 256x128: the Triton kernel, interpreted here
    assert "FAIL" not in text


def _weight():
    from q4lab.core import QuantSpec
    from q4lab.quantizers import get_quantizer

    w = jnp.linspace(-1, 1, 64 * 256).reshape(64, 256)
    return get_quantizer("minmax").quantize(
        w, QuantSpec(bits=4, group_size=16, scale_dtype="float16")
    )


def test_the_fake_forward_multiplies_float32_in_full_on_a_gpu():
    """The simulation's float32 dots ran at the default precision, which a GPU rounds to TF32
    (2.5e-4 off the integer path, enough to move codes downstream); the conv's too."""
    import jax

    from q4lab.hooks import QuantHook
    from q4lab.layer_quant import ActState, quantized_dot
    from q4lab.recipe import ActSpec

    w = jax.random.normal(jax.random.key(0), (64, 32))
    x = jnp.ones((4, 64))
    act = ActState(ActSpec())
    fake = lowered_for_gpu(lambda x, w: quantized_dot(x, w, act, "fake"), x, w).as_text()
    assert rounded_dots(fake) == []
    hook = QuantHook(None, act, "fake")
    images, kernel = jnp.ones((2, 6, 6, 4)), jnp.ones((3, 3, 4, 8))
    dn = jax.lax.conv_dimension_numbers(images.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    conv = lowered_for_gpu(
        lambda a, k: hook.conv(a, k, (1, 1), "SAME", dimension_numbers=dn), images, kernel
    ).as_text()
    (line,) = [line for line in conv.splitlines() if "stablehlo.convolution" in line]
    assert "precision_config = [#stablehlo<precision HIGHEST>, #stablehlo<precision HIGHEST>]" in (
        line
    )
