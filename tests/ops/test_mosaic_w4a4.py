"""The Mosaic GPU W4A4 kernel: on CPU through Mosaic GPU's interpreter (weight tiles N-major, the
form it reads) and lowered for CUDA (K-major tiles); on a GPU the kernel itself."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from q4lab.core import QuantSpec
from q4lab.ops import int_matmul, on_gpu
from q4lab.ops.mosaic_w4a4 import MosaicConfig, unsupported, w4a4_mosaic
from q4lab.quantizers import get_quantizer

SMALL = MosaicConfig(block_m=64, block_n=64, block_k=64, stages=2)


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
    for spec in specs:
        qt = get_quantizer("minmax").quantize(w, spec)
        for q in (qt, dataclasses.replace(qt, perm=perm)):
            y = w4a4_mosaic(xc, row_scale, q, config=SMALL, interpret=not on_gpu())
            expected = int_matmul(xc, row_scale, q, impl="xla")
            np.testing.assert_array_equal(np.asarray(y), np.asarray(expected), spec.describe())


def test_mosaic_w4a4_refuses_group_scales_and_ragged_shapes():
    w = jax.random.normal(jax.random.key(24), (128, 96))
    grouped = get_quantizer("minmax").quantize(w, QuantSpec(group_size=32))
    assert "group scales" in unsupported(grouped, 16)
    per_channel = get_quantizer("minmax").quantize(w, QuantSpec())
    assert "not a multiple of" in unsupported(per_channel, 16, SMALL)


def test_mosaic_w4a4_lowers_for_the_gpu():
    """With the K-major tiles Hopper's 8-bit wgmma reads (what the interpreter cannot run): an
    operation Mosaic GPU has no lowering for fails here, not in a device call."""
    w = jax.random.normal(jax.random.key(25), (256, 256))
    xc, row_scale = jnp.ones((300, 256), jnp.int8), jnp.ones((300, 1))
    for spec in (QuantSpec(), QuantSpec(symmetric=False)):
        qt = get_quantizer("minmax").quantize(w, spec)
        lowered = jax.jit(w4a4_mosaic).trace(xc, row_scale, qt).lower(lowering_platforms=("cuda",))
        assert "mosaic_gpu" in lowered.as_text()
