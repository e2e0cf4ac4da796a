"""The GPU kernels, run through the Pallas interpreter: same numbers as the reference.

Tiles are shrunk (16 bytes of a code row, 64 as words; 32 rows) so tiny weights cover several
programs and split-K slices; speed is only measured on a GPU (benchmarks/bench_ops.py).
"""

import dataclasses
import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q4lab.core import QuantSpec, dequantize_matrix, quantize, relayout
from q4lab.ops import int_matmul, w4a16_matmul
from q4lab.ops import pallas_kmajor as kmajor
from q4lab.ops.pallas_gpu import W4A16_DEFAULT, KernelConfig, unsupported, w4a4_pallas, w4a16_pallas
from q4lab.quantizers import get_quantizer

TINY = KernelConfig(block_n=16, block_k=32, split_k=2, block_m=16)
# 32-bit words: 8 codes a load, so a block is 64 bytes (16 words, a dot's least width)
LOADS = {"bytes": TINY, "words": dataclasses.replace(TINY, block_n=64, load="words")}
SPECS = {
    "sym g32": QuantSpec(group_size=32),
    "asym g32 f16": QuantSpec(group_size=32, symmetric=False, scale_dtype="float16"),
    "sym per-channel": QuantSpec(),
    "asym per-channel": QuantSpec(symmetric=False),
    "asym per-tensor": QuantSpec(granularity="per_tensor", symmetric=False),
}
# every weight spec with bytes; words (the same arithmetic on 8 phases) with and without zeros
CASES = [(name, "bytes") for name in SPECS] + [("sym g32", "words"), ("asym g32 f16", "words")]


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.fixture(scope="module")
def weights():
    w = jax.random.normal(jax.random.key(0), (128, 256))  # words: two blocks of 64 bytes
    return {name: get_quantizer("minmax").quantize(w, spec) for name, spec in SPECS.items()}


@pytest.mark.parametrize(("name", "load"), CASES)
def test_w4a16_kernel_matches_the_reference(weights, name, load):
    """The kernel computes ``16 * x @ (1 + u/16) - (16 + zero) * sum(x)``: float32 cancellation
    (zero-mean x here; see the error-bound test for others)."""
    qt = weights[name]
    x = jax.random.normal(jax.random.key(1), (20, 128))  # two row blocks of 16
    y = w4a16_pallas(x, qt, config=LOADS[load], interpret=True)
    assert y.shape == (20, 256) and _rel(y, x @ dequantize_matrix(qt)) < 1e-5


def test_odd_n_pads_a_phase_and_drops_it():
    w = jax.random.normal(jax.random.key(19), (64, 31))  # 16 bytes a row, the last half-empty
    qt = get_quantizer("minmax").quantize(w, SPECS["asym g32 f16"])
    x = jax.random.normal(jax.random.key(20), (3, 64))
    assert _rel(w4a16_pallas(x, qt, config=TINY, interpret=True), x @ dequantize_matrix(qt)) < 1e-5
    xc = jnp.asarray(np.random.default_rng(21).integers(-7, 8, (3, 64)), jnp.int8)
    y = w4a4_pallas(xc, jnp.ones((1, 1)), qt, config=TINY, interpret=True)
    assert y.shape == (3, 31)
    assert _rel(y, int_matmul(xc, jnp.ones((1, 1)), qt, impl="reference")) < 1e-6


def test_w4a16_error_bound_for_inputs_far_from_zero_mean():
    """``16 * x @ (1 + u/16) - (16 + z) * sum(x)`` cancels: the error follows sum |x|. Inputs with
    mean 3 standard deviations over K=1024 stay within 5e-5 of max |y| (measured 2.2e-5)."""
    w = jax.random.normal(jax.random.key(17), (1024, 128))
    qt = get_quantizer("minmax").quantize(w, QuantSpec(group_size=128))
    x = jax.random.normal(jax.random.key(18), (2, 1024)) + 3.0
    y = w4a16_pallas(x, qt, config=KernelConfig(block_n=64, split_k=1), interpret=True)
    assert _rel(y, x @ dequantize_matrix(qt)) < 5e-5


@pytest.mark.parametrize("name", ["asym g32 f16"])  # zero points and groups: the general case
def test_one_row_of_x_on_tensor_cores_and_on_cuda_cores(weights, name):
    qt = weights[name]
    x = jax.random.normal(jax.random.key(11), (1, 128)).astype(jnp.float16)
    expected = x.astype(jnp.float32) @ dequantize_matrix(qt)
    for compute, load in itertools.product(("dot", "fma"), LOADS):
        config = dataclasses.replace(LOADS[load], compute=compute)
        y = w4a16_pallas(x, qt, config=config, interpret=True)
        assert y.shape == (1, 256) and _rel(y, expected) < 1e-5, (compute, load)
    assert "one row" in unsupported(qt, 2, dataclasses.replace(TINY, compute="fma"))


@pytest.mark.parametrize(("name", "load"), CASES)
def test_w4a4_kernel_matches_the_integer_reference(weights, name, load):
    qt = weights[name]
    xc = jnp.asarray(np.random.default_rng(2).integers(-7, 8, (20, 128)), jnp.int8)
    row_scale = jax.random.uniform(jax.random.key(3), (20, 1)) + 0.5
    y = w4a4_pallas(xc, row_scale, qt, config=LOADS[load], interpret=True)
    assert _rel(y, int_matmul(xc, row_scale, qt, impl="reference")) < 1e-6


def test_kernels_apply_the_act_order_permutation_and_bfloat16_inputs():
    w = jax.random.normal(jax.random.key(4), (64, 32))
    perm = jnp.asarray(np.random.default_rng(5).permutation(64), jnp.int32)
    qt = quantize(
        w, QuantSpec(group_size=32), jnp.full((2, 32), float(jnp.abs(w).max()) / 7), perm=perm
    )
    x = jax.random.normal(jax.random.key(6), (3, 64)).astype(jnp.bfloat16)
    expected = x.astype(jnp.float32) @ dequantize_matrix(qt)
    assert _rel(w4a16_pallas(x, qt, config=TINY, interpret=True), expected) < 1e-5
    xc = jnp.asarray(np.random.default_rng(7).integers(-7, 8, (3, 64)), jnp.int8)
    expected = xc.astype(jnp.float32) @ dequantize_matrix(qt)
    assert _rel(w4a4_pallas(xc, jnp.ones((1, 1)), qt, config=TINY, interpret=True), expected) < 1e-6


def test_default_tiles_through_the_public_op():
    qt = get_quantizer("minmax").quantize(
        jax.random.normal(jax.random.key(8), (256, 256)), QuantSpec(group_size=128)
    )
    x = jax.random.normal(jax.random.key(9), (2, 256))
    y = w4a16_matmul(x, qt, impl="pallas_interpret")
    assert _rel(y, x @ dequantize_matrix(qt)) < 1e-5


def test_shapes_the_kernels_cannot_take_are_named():
    qt = get_quantizer("minmax").quantize(jnp.ones((64, 20)), QuantSpec(group_size=16))
    assert "block_n" in unsupported(qt, 1, TINY)  # 10 columns per half
    qt = get_quantizer("minmax").quantize(jnp.ones((48, 32)), QuantSpec(group_size=24))
    assert "power of two" in unsupported(qt, 1, TINY)
    with pytest.raises(ValueError, match="w4a16_pallas cannot run this weight"):
        w4a16_pallas(jnp.ones((1, 48)), qt, config=TINY, interpret=True)
    w3 = get_quantizer("minmax").quantize(jnp.ones((64, 32)), QuantSpec(bits=3, group_size=32))
    assert "3-bit codes are not nibbles; allowed widths: 4" in unsupported(w3, 1, TINY)
    with pytest.raises(ValueError, match="w4a4_pallas cannot run this weight: 3-bit"):
        w4a4_pallas(jnp.ones((1, 64), jnp.int8), jnp.ones((1, 1)), w3, config=TINY, interpret=True)


def test_w4a16_kernel_tiles_rows_when_lowered_for_the_gpu(lowered_for_cuda):
    """The harness' evaluation batches (hundreds of float32 rows) go through the kernel in row
    blocks of at most ``block_m``: one 512-row tile spilled its accumulators and took minutes to
    compile on an H200. Lowered for CUDA from this CPU, the launch grid shows the tiling."""
    qt = get_quantizer("minmax").quantize(
        jax.random.normal(jax.random.key(10), (64, 256)), QuantSpec(group_size=32)
    )
    x = jnp.ones((360, 64))  # digits-mlp's test split through its first layer
    lowered = lowered_for_cuda(w4a16_pallas, x, qt)
    grid = re.search(r"grid_x = (\d+) : i32, grid_y = (\d+) : i32, grid_z = (\d+)", lowered)
    rows_blocks, column_blocks, _ = (int(v) for v in grid.groups())
    assert rows_blocks == -(-360 // W4A16_DEFAULT.block_m) and column_blocks == 1


def test_kmajor_w4a4_kernel_matches_the_integer_reference():
    """Codes K-major (two rows a byte), activations split into even and odd columns."""
    w = jax.random.normal(jax.random.key(12), (128, 32))
    perm = jnp.asarray(np.random.default_rng(13).permutation(128), jnp.int32)
    xc = jnp.asarray(np.random.default_rng(14).integers(-7, 8, (20, 128)), jnp.int8)
    row_scale = jax.random.uniform(jax.random.key(15), (20, 1)) + 0.5
    config = KernelConfig(block_m=16, block_n=16, block_k=64)
    for spec in (QuantSpec(group_size=64), QuantSpec(symmetric=False), SPECS["asym g32 f16"]):
        qt = get_quantizer("minmax").quantize(w, spec)
        if spec.group_size == 32:
            assert "not a power of two >= 64" in kmajor.unsupported(qt, config)
            continue
        qt = dataclasses.replace(qt, perm=perm)
        expected = int_matmul(xc, row_scale, qt, impl="reference")
        for layout in ("rows", "kmajor"):  # re-laid by the call, or laid out once
            laid_out = relayout(qt, layout)
            y = kmajor.w4a4_kmajor_pallas(xc, row_scale, laid_out, config=config, interpret=True)
            assert _rel(y, expected) < 1e-6, (spec.describe(), layout)


def test_every_tuned_kernel_lowers_for_the_gpu(lowered_for_cuda):
    """Each kernel form the GPU benchmark times (byte and word loads, the CUDA-core form for one
    row, W4A4 N-major and K-major) lowers to Triton for CUDA from this CPU: an unsupported
    primitive fails here, not in a device call."""
    w = jax.random.normal(jax.random.key(16), (256, 512))
    grouped = get_quantizer("minmax").quantize(w, QuantSpec(group_size=128, symmetric=False))
    per_channel = get_quantizer("minmax").quantize(w, QuantSpec())
    x, xc, row_scale = (
        jnp.ones((16, 256), jnp.bfloat16),
        jnp.ones((300, 256), jnp.int8),
        jnp.ones((300, 1)),
    )
    words = KernelConfig(block_n=128, load="words")
    cases = [
        (w4a16_pallas, (x, grouped), words),
        (w4a16_pallas, (x[:1], grouped), dataclasses.replace(words, compute="fma")),
        (w4a4_pallas, (xc, row_scale, per_channel), words),
        (kmajor.w4a4_kmajor_pallas, (xc, row_scale, grouped), kmajor.W4A4_KMAJOR_DEFAULT),
    ]
    for kernel, args, config in cases:
        assert "triton" in lowered_for_cuda(functools.partial(kernel, config=config), *args)
