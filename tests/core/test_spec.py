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
