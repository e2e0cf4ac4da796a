import pytest

from q4lab.core import QuantSpec


def test_defaults_are_4bit_symmetric_per_channel():
    spec = QuantSpec()
    assert (spec.bits, spec.symmetric, spec.granularity, spec.scale_dtype) == (
        4,
        True,
        "per_channel",
        "float32",
    )
    assert (spec.qmin, spec.qmax) == (-8, 7)


def test_group_size_implies_per_group_and_ranges_follow_symmetry():
    spec = QuantSpec(bits=3, symmetric=False, group_size=64)
    assert spec.granularity == "per_group"
    assert (spec.qmin, spec.qmax) == (0, 7)
    assert spec.num_groups(256) == 4
    assert spec.describe() == "W3 asym g64"


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"bits": 1}, "bits", "2..8"),
        ({"bits": 9}, "bits", "2..8"),
        ({"bits": 4.0}, "bits", "2..8"),
        ({"granularity": "per_row"}, "granularity", "per_tensor, per_channel, per_group"),
        ({"granularity": "per_group"}, "group_size", "positive int"),
        ({"group_size": 0}, "group_size", "positive int"),
        ({"granularity": "per_channel", "group_size": 32}, "group_size", "None"),
        ({"scale_dtype": "float64"}, "scale_dtype", "float32, bfloat16, float16"),
        ({"symmetric": "yes"}, "symmetric", "True or False"),
        ({"symmetric_grid": "narrow"}, "symmetric_grid", "max, full"),
        ({"symmetric": False, "symmetric_grid": "full"}, "symmetric_grid", "'max' when asym"),
    ],
)
def test_invalid_specs_name_the_field_and_the_allowed_values(kwargs, field, allowed):
    with pytest.raises(ValueError, match=rf"QuantSpec\.{field}=.*allowed: .*{allowed}"):
        QuantSpec(**kwargs)


def test_group_size_must_divide_the_input_axis():
    spec = QuantSpec(group_size=48)
    spec.check_input_size(96)
    with pytest.raises(ValueError, match=r"group_size=48 does not divide .*K=100 for 'dense_1'"):
        spec.check_input_size(100, where="'dense_1'")


def test_spec_is_hashable_for_jit():
    assert hash(QuantSpec(group_size=32)) == hash(QuantSpec(group_size=32))


@pytest.mark.parametrize(
    ("bits", "per_word", "word_bytes", "stored_bits", "row_of_10"),
    [(2, 4, 1, 2, 3), (3, 8, 3, 3, 6), (4, 2, 1, 4, 5), (5, 1, 1, 8, 10), (8, 1, 1, 8, 10)],
)
def test_the_spec_tells_how_its_codes_are_stored(
    bits, per_word, word_bytes, stored_bits, row_of_10
):
    spec = QuantSpec(bits=bits)
    assert (spec.codes_per_word, spec.word_bytes, spec.stored_bits) == (
        per_word,
        word_bytes,
        stored_bits,
    )
    assert spec.packed_length(10) == row_of_10  # whole words: 10 codes pad to 12 / 16 / 10
    assert spec.nibbles == (bits == 4)


def test_the_full_symmetric_grid_puts_every_code_to_use():
    """The default grid puts amax on the largest code, so the most negative code is met only
    where a range clips: 2-bit min-max weights take 3 of 4 levels. The full grid (GPTQ's
    reference, PyTorch) spreads all 2^b codes over [-amax, amax] and clips +amax by half a step."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from q4lab.core import dequantize
    from q4lab.quantizers import get_quantizer

    w = jax.random.normal(jax.random.key(0), (64, 16))
    for bits in (2, 3, 4):
        amax = jnp.max(jnp.abs(w), axis=0)
        used, errors = {}, {}
        for grid in ("max", "full"):
            spec = QuantSpec(bits=bits, symmetric_grid=grid)
            qt = get_quantizer("minmax").quantize(w, spec)
            steps = spec.range_steps
            np.testing.assert_allclose(qt.scale[0], amax / steps, rtol=1e-6)
            codes = np.round(np.asarray(dequantize(qt)) / np.asarray(qt.scale))
            used[grid] = len(np.unique(codes))
            errors[grid] = float(jnp.mean((dequantize(qt) - w) ** 2))
        assert used == {"max": 2**bits - 1, "full": 2**bits}, bits
        assert (
            QuantSpec(bits=bits, symmetric_grid="full").describe().startswith(f"W{bits} sym full")
        )
        if bits == 2:  # a fourth level is worth more than the clipped top at 2 bits
            assert errors["full"] < 0.7 * errors["max"]
