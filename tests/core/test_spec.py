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
        ({"symmetric_grid": "narrow"}, "symmetric_grid", "max, half_step"),
        ({"symmetric": False, "symmetric_grid": "half_step"}, "symmetric_grid", "'max' when"),
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


def test_the_half_step_symmetric_grid_is_gptqs_reference_grid():
    """The default grid puts amax on the largest code; GPTQ's reference quantizer and PyTorch's
    symmetric observers put it half a step beyond (scale amax / (2^(b-1) - 1/2)): the bins of
    codes -qmax..qmax tile [-amax, amax], +amax rounds down, and the most negative code holds
    at most -amax itself (a tie). It is the max grid with its range clipped to qmax/(qmax+1/2)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from q4lab.core import dequantize, quantize
    from q4lab.quantizers import get_quantizer

    w = jax.random.normal(jax.random.key(0), (64, 16))
    amax = jnp.max(jnp.abs(w), axis=0)
    for bits in (2, 3, 4):
        half, top = (QuantSpec(bits=bits, symmetric_grid=g) for g in ("half_step", "max"))
        qt = get_quantizer("minmax").quantize(w, half)
        np.testing.assert_allclose(qt.scale[0], amax / (2 ** (bits - 1) - 0.5), rtol=1e-6)
        clipped = quantize(w, top, qt.scale)  # the same codes from the max grid's clip
        np.testing.assert_array_equal(dequantize(clipped), dequantize(qt))
        codes = np.round(np.asarray(dequantize(qt)) / np.asarray(qt.scale))
        assert (codes == half.qmin).sum() <= w.shape[1]  # -amax alone, per column
        assert half.describe() == f"W{bits} sym half-step per-channel"
    w2 = {
        g: get_quantizer("minmax").quantize(w, QuantSpec(bits=2, symmetric_grid=g))
        for g in ("max", "half_step")
    }
    errors = {g: float(jnp.mean((dequantize(qt) - w) ** 2)) for g, qt in w2.items()}
    assert errors["half_step"] < 0.7 * errors["max"]  # at 2 bits a smaller step is worth the clip
