"""The Mosaic GPU kernels: on CPU through Mosaic GPU's interpreter and lowered for CUDA (the forms
a GPU runs); on a GPU the kernels themselves."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q4lab.core import QuantSpec, dequantize_matrix, relayout
from q4lab.ops import int_matmul, on_gpu, w4a16_matmul
from q4lab.ops.mosaic_gpu import (
    MOSAIC_DEFAULT,
    W4A16_MOSAIC_DEFAULT,
    MosaicConfig,
    unsupported,
    w4a4_mosaic,
    w4a16_mosaic,
)
from q4lab.quantizers import get_quantizer

SMALL = MosaicConfig(block_m=64, block_n=64, block_k=64, stages=2, split_k=2)
# the specs of each test alternate between one unpacked tile and two (overlapping wgmma); the
# interpreter runs wgmma synchronously, so only a GPU run can catch a race in the second form
FORMS = (SMALL, dataclasses.replace(SMALL, overlap=True))
# W4A16 also hands wgmma its tile in registers on a GPU (the interpreter stores it, as SMALL does)
W4A16_FORMS = (*FORMS, dataclasses.replace(SMALL, registers=True))


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_mosaic_w4a4_equals_the_xla_form_bit_for_bit():
    """Per-channel and per-tensor, symmetric and asymmetric, act-order rows, M not a multiple of
    the row block: the int32 sums are exact and the scales are applied in the xla form's order."""
    w = jax.random.normal(jax.random.key(20), (128, 128))
    perm = jnp.asarray(np.random.default_rng(21).permutation(128), jnp.int32)
    xc = jnp.asarray(np.random.default_rng(22).integers(-8, 8, (70, 128)), jnp.int8)
    row_scale = jax.random.uniform(jax.random.key(23), (70, 1)) + 0.5
    specs = [
        QuantSpec(),
        QuantSpec(symmetric=False),
        QuantSpec(granularity="per_tensor", symmetric=False),
    ]
    for t, spec in enumerate(specs):
        qt = get_quantizer("minmax").quantize(w, spec)
        for q in (qt, dataclasses.replace(qt, perm=perm)):
            laid_out = relayout(q, "kmajor") if q.perm is not None else q  # or re-laid by the call
            y = w4a4_mosaic(xc, row_scale, laid_out, config=FORMS[t % 2], interpret=not on_gpu())
            expected = int_matmul(xc, row_scale, q, impl="xla")
            np.testing.assert_array_equal(np.asarray(y), np.asarray(expected), spec.describe())


def test_mosaic_w4a16_is_x_times_the_16_bit_weight_of_the_xla_form():
    """Group scales: ``(u - zero) * scale`` rounded to bfloat16 in shared memory, as the xla form
    rounds its weight (multiplied in bfloat16 with bfloat16 scales, in float32 with others); one
    scale row: the codes, then the scale after the dot, as the xla form.
    Rows of x padded to 16 and 32; bfloat16 and float16 x; K split in two; act-order rows; laid
    out once or per call."""
    w = jax.random.normal(jax.random.key(26), (256, 128))
    perm = jnp.asarray(np.random.default_rng(27).permutation(256), jnp.int32)
    specs = [
        QuantSpec(group_size=64, symmetric=False, scale_dtype="bfloat16"),
        QuantSpec(group_size=64, scale_dtype="float16"),
        QuantSpec(),
        QuantSpec(symmetric=False),
    ]
    x = jax.random.normal(jax.random.key(28), (20, 256)).astype(jnp.bfloat16)
    for t, spec in enumerate(specs):
        qt = dataclasses.replace(get_quantizer("minmax").quantize(w, spec), perm=perm)
        laid_out = relayout(qt, "kmajor") if t < 2 else qt
        if t < 2:  # the same code bytes, re-ordered; the same scales
            assert laid_out.codes.nbytes == qt.codes.nbytes == w.size // 2
            assert laid_out.scale.nbytes == qt.scale.nbytes
        halves = (x.astype(jnp.float16),) if t % 2 else ()  # float16 x: f16 scales, one row
        for rows in (x[:1], x, *halves):
            y = w4a16_mosaic(rows, laid_out, config=W4A16_FORMS[t % 3], interpret=not on_gpu())
            assert y.shape == (rows.shape[0], 128)
            # float32 sums of the same products in another order
            assert _rel(y, w4a16_matmul(rows, qt, impl="xla")) < 1e-6, spec.describe()
    exact = x.astype(jnp.float32) @ dequantize_matrix(qt).astype(jnp.bfloat16).astype(jnp.float32)
    # the tolerance tells the two forms apart: one scale row, xla's scale-after-the-dot product
    # and the product of the weight rounded to bfloat16 differ by far more
    assert _rel(w4a16_matmul(x, qt, impl="xla"), exact) > 1e-4


def test_mosaic_kernels_read_codes_a_jitted_closure_holds_as_passed_ones():
    """XLA folds the int4 cast of constant codes wrongly: held by a closure, the kernels read
    shuffled codes (W4A16 off by 87 for outputs up to 63)."""
    w = jax.random.normal(jax.random.key(30), (128, 128))
    qt = relayout(get_quantizer("minmax").quantize(w, QuantSpec()), "kmajor")
    x = jax.random.normal(jax.random.key(31), (8, 128), jnp.bfloat16)
    run = functools.partial(w4a16_mosaic, config=SMALL, interpret=not on_gpu())
    held = jax.jit(lambda x: run(x, qt))(x)
    np.testing.assert_array_equal(np.asarray(held), np.asarray(jax.jit(run)(x, qt)))


def test_mosaic_kernels_refuse_what_they_cannot_run():
    w = jax.random.normal(jax.random.key(24), (128, 96))
    grouped = get_quantizer("minmax").quantize(w, QuantSpec(group_size=32))
    assert "group scales" in unsupported(grouped, 16)
    assert "block_k=64" in unsupported(grouped, 16, SMALL, w4a4=False)
    per_channel = get_quantizer("minmax").quantize(w, QuantSpec())
    assert "not a multiple of" in unsupported(per_channel, 16, SMALL)
    assert "at most 64" in unsupported(per_channel, 65, w4a4=False)
    assert "right operand" in unsupported(per_channel, 16, MosaicConfig(registers=True))
    with pytest.raises(ValueError, match="choose one"):
        MosaicConfig(overlap=True, registers=True)


def test_mosaic_kernels_lower_for_the_gpu(lowered_for_cuda):
    """In the forms a GPU runs (K-major int8 tiles, register layouts), with the default tilings,
    one unpacked tile and two:
    an operation Mosaic GPU has no lowering for fails here, not in a device call."""
    w = jax.random.normal(jax.random.key(25), (1024, 256))
    xc, row_scale = jnp.ones((300, 1024), jnp.int8), jnp.ones((300, 1))
    cases = [
        (w4a4_mosaic, (xc, row_scale), spec) for spec in (QuantSpec(), QuantSpec(symmetric=False))
    ]
    cases += [
        (w4a16_mosaic, (jnp.ones((m, 1024), jnp.bfloat16),), spec)
        for m, spec in ((1, QuantSpec(group_size=128)), (40, QuantSpec(symmetric=False)))
    ]
    for t, (kernel, args, spec) in enumerate(cases):
        qt = get_quantizer("minmax").quantize(w, spec)
        qt = relayout(qt, "kmajor") if t < 2 else qt  # stored K-major, or re-laid in the call
        default = MOSAIC_DEFAULT if kernel is w4a4_mosaic else W4A16_MOSAIC_DEFAULT
        kernel = functools.partial(kernel, config=dataclasses.replace(default, overlap=t % 2 == 1))
        assert "mosaic_gpu" in lowered_for_cuda(kernel, *args, qt)


def test_mosaic_w4a16_unpacks_codes_with_integer_ops(mosaic_kernel_ir):
    """On the GPU the 4-bit codes become bfloat16 with integer ops (the nibble XOR-ed into the
    mantissa of a bfloat16 whose exponent makes it an integer, then that bias subtracted: the
    0x4308 constant), never an int-to-float convert; scales stored in x's dtype multiply two to a
    register in that dtype, others in float32. With ``registers=True`` wgmma takes the unpacked
    tile from registers (its A operand a list of registers, not a shared-memory descriptor)."""
    w = jax.random.normal(jax.random.key(29), (1024, 128))
    cases = [  # x dtype, scale dtype, what multiplies the scales, wgmma's A from registers
        (jnp.bfloat16, "bfloat16", "vector<2xbf16>", True),
        (jnp.float16, "float16", "vector<2xf16>", False),
        (jnp.bfloat16, "float16", "vector<2xf32>", True),
    ]
    for dtype, scale_dtype, product, registers in cases:
        spec = QuantSpec(group_size=128, symmetric=False, scale_dtype=scale_dtype)
        qt = relayout(get_quantizer("minmax").quantize(w, spec), "kmajor")
        config = dataclasses.replace(W4A16_MOSAIC_DEFAULT, registers=registers)
        kernel = functools.partial(w4a16_mosaic, config=config)
        ir = mosaic_kernel_ir(kernel, jnp.ones((4, 1024), dtype), qt)
        case = (dtype, scale_dtype, registers)
        assert "0x43084308" in ir, case  # CUTLASS's int4 -> bfloat16 converter
        assert "arith.sitofp" not in ir, case
        multiplies = set(re.findall(r"arith\.mulf .* : (vector<\d+x\w+>)", ir))
        assert multiplies == {product}, (case, multiplies)
        wgmma = re.findall(r"wgmma\.mma_async\S* \{[$\d,]+\}, (\{|\$)", ir)
        assert wgmma and set(wgmma) == {"{" if registers else "$"}, (case, wgmma)
