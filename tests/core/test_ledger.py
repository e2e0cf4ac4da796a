import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q4lab.core import QuantSpec, size_ledger, stored_bytes
from q4lab.quantizers import get_quantizer


def _held_nbytes(tree):
    return sum(int(leaf.nbytes) for leaf in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope="module")
def mixed_params():
    key = jax.random.key(0)
    w = jax.random.normal(key, (256, 64))
    conv = jax.random.normal(key, (3, 16, 32))
    return {
        "dense": {
            "kernel": get_quantizer("minmax").quantize(w, QuantSpec(group_size=128)),
            "bias": jnp.zeros(64),
        },
        "conv": {
            "kernel": get_quantizer("mse").quantize(
                conv,
                QuantSpec(symmetric=False, group_size=16, scale_dtype="bfloat16"),
                in_axes=(0, 1),
            ),
            "bias": jnp.zeros(32, jnp.bfloat16),
        },
        "head": {
            "kernel": jax.random.normal(key, (64, 10)),
            "odd": get_quantizer("minmax").quantize(
                jax.random.normal(key, (8, 5)), QuantSpec(bits=3)
            ),
            "two": get_quantizer("minmax").quantize(
                jax.random.normal(key, (16, 7)), QuantSpec(bits=2, symmetric=False, group_size=8)
            ),
        },
    }


def test_ledger_equals_the_bytes_actually_held(mixed_params):
    ledger = size_ledger(mixed_params)
    assert ledger.total_bytes == _held_nbytes(mixed_params)
    quantized = [
        leaf
        for leaf in jax.tree_util.tree_leaves(mixed_params, is_leaf=lambda x: hasattr(x, "spec"))
        if hasattr(leaf, "spec")
    ]
    assert ledger.quantized_bytes == sum(stored_bytes(qt) for qt in quantized)
    assert ledger.float_bytes == 64 * 4 + 32 * 2 + 64 * 10 * 4
    assert ledger.params == 256 * 64 + 64 + 3 * 16 * 32 + 32 + 640 + 40 + 112
    paths = [leaf.path for leaf in ledger.leaves]
    assert "['dense']['kernel']" in paths and "['conv']['bias']" in paths


def test_4bit_g128_fp16_symmetric_is_4_125_bits_per_weight():
    w = jax.random.normal(jax.random.key(1), (512, 96))
    qt = get_quantizer("minmax").quantize(w, QuantSpec(group_size=128, scale_dtype="float16"))
    ledger = size_ledger({"w": qt})
    assert ledger.bits_per_weight == 4.125
    assert ledger.ideal_bits_per_weight == 4.125
    assert ledger.total_bytes == 512 * 96 // 2 + 4 * 96 * 2


def test_3bit_g128_fp16_symmetric_is_3_125_bits_per_weight():
    w = jax.random.normal(jax.random.key(1), (256, 64))
    qt = get_quantizer("minmax").quantize(
        w, QuantSpec(bits=3, group_size=128, scale_dtype="float16")
    )
    ledger = size_ledger({"w": qt})
    assert ledger.bits_per_weight == ledger.ideal_bits_per_weight == 3.125
    assert ledger.total_bytes == 256 * 64 * 3 // 8 + 2 * 64 * 2


@pytest.mark.parametrize("bits", [2, 3])
def test_narrow_codes_are_stored_at_their_width_up_to_whole_words(bits):
    w = jax.random.normal(jax.random.key(2), (64, 32))
    spec = QuantSpec(bits=bits, symmetric=False, group_size=32, scale_dtype="float16")
    whole = size_ledger({"w": get_quantizer("minmax").quantize(w, spec)})
    # N = 32 fills whole words: codes and zero points take exactly `bits` each
    assert whole.total_bytes == (64 + 2) * 32 * bits // 8 + 2 * 32 * 2
    assert whole.bits_per_weight == whole.ideal_bits_per_weight
    odd = size_ledger({"w": get_quantizer("minmax").quantize(w[:, :5], spec)})
    # N = 5 pads each row of codes and zero points to one word (4 or 8 codes)
    row = spec.packed_length(5)
    assert row == {2: 2, 3: 3}[bits]
    assert odd.total_bytes == (64 + 2) * row + 2 * 5 * 2
    assert odd.bits_per_weight > odd.ideal_bits_per_weight


def test_wide_codes_report_stored_and_ideal_sizes_apart():
    w = jax.random.normal(jax.random.key(2), (64, 32))
    six = size_ledger(get_quantizer("minmax").quantize(w, QuantSpec(bits=6, symmetric=False)))
    # 6-bit codes in bytes; zero points one byte each per channel; float32 scales per channel
    assert six.total_bytes == 64 * 32 + 32 + 32 * 4
    assert six.ideal_bits_per_weight == pytest.approx((6 * 64 * 32 + 6 * 32 + 32 * 32) / (64 * 32))


def test_compression_is_relative_to_float32_of_every_parameter(mixed_params):
    ledger = size_ledger(mixed_params)
    assert ledger.compression == ledger.fp32_bytes / ledger.total_bytes
    assert ledger.fp32_bytes == 4 * ledger.params
    row = ledger.totals()
    assert row["bits_per_weight"] == ledger.bits_per_weight
    assert np.isnan(size_ledger({"w": jnp.ones(3)}).bits_per_weight)
