import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from q4lab.core import (
    QuantSpec,
    act_codes,
    act_fake_quant,
    act_params,
    dequantize_matrix,
    quantize,
    relayout,
)
from q4lab.ops import (
    GPU_CHOICES,
    choose,
    halves,
    int_matmul,
    mosaic_gpu,
    on_gpu,
    pallas_gpu,
    w4a16_matmul,
)
from q4lab.ops.blocked import block_rows, w4a16_blocked
from q4lab.ops.matmul import WIDTHS
from q4lab.quantizers import get_quantizer


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


specs = st.builds(
    lambda bits, symmetric, gran: QuantSpec(
        bits=bits,
        symmetric=symmetric,
        granularity="per_group" if isinstance(gran, int) else gran,
        group_size=gran if isinstance(gran, int) else None,
    ),
    bits=st.sampled_from([2, 3, 4, 8]),
    symmetric=st.booleans(),
    gran=st.sampled_from(["per_tensor", "per_channel", 8, 16]),
)


@given(
    seed=st.integers(0, 1000),
    spec=specs,
    act_bits=st.sampled_from([4, 8]),
    act_symmetric=st.booleans(),
    per_row=st.booleans(),
    impl=st.sampled_from(["reference", "xla", "auto"]),
    n=st.sampled_from([1, 6]),  # one output column: its grid looks per-tensor by shape
)
def test_int_matmul_equals_the_float_product_of_dequantized_operands(
    seed, spec, act_bits, act_symmetric, per_row, impl, n
):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (5, 32))
    w = jax.random.normal(kw, (32, n))
    qt = get_quantizer("minmax").quantize(w, spec)
    gran = "per_channel" if per_row else "per_tensor"
    act = QuantSpec(bits=act_bits, symmetric=act_symmetric, granularity=gran)
    scale, zero = act_params(x, act, get_quantizer("minmax"))
    y_int = int_matmul(act_codes(x, scale, zero, act), scale, qt, impl=impl)
    y_float = act_fake_quant(x, scale, zero, act) @ dequantize_matrix(qt)
    np.testing.assert_allclose(np.asarray(y_int), np.asarray(y_float), rtol=1e-5, atol=1e-5)


@given(
    seed=st.integers(0, 1000), spec=specs, n=st.sampled_from([1, 5, 6]), m=st.sampled_from([1, 3])
)
def test_every_w4a16_path_is_x_times_the_dequantized_weight(seed, spec, n, m):
    kx, kw = jax.random.split(jax.random.key(seed))
    w = jax.random.normal(kw, (32, n))
    qt = get_quantizer("mse").quantize(w, spec)
    x = jax.random.normal(kx, (m, 32))
    expected = x @ dequantize_matrix(qt)
    impls = ["reference", "xla", "auto"] + (["blocked"] if spec.bits == 4 else [])
    for impl in impls:
        assert _rel(w4a16_matmul(x, qt, impl=impl), expected) < 1e-5, impl


@pytest.mark.parametrize("group_size", [None, 8])
def test_a_single_output_column_runs_on_every_path(group_size):
    """N = 1: a [G, 1] scale grid is not a per-tensor one (the half-column split took it so)."""
    w = jax.random.normal(jax.random.key(0), (32, 1))
    x = jax.random.normal(jax.random.key(1), (4, 32))
    act = QuantSpec(bits=4, granularity="per_channel")
    scale, zero = act_params(x, act, get_quantizer("minmax"))
    xc = act_codes(x, scale, zero, act)
    for symmetric in (True, False):
        qt = get_quantizer("minmax").quantize(
            w, QuantSpec(symmetric=symmetric, group_size=group_size)
        )
        expected = x @ dequantize_matrix(qt)
        for impl in ("xla", "blocked", "auto"):
            assert _rel(w4a16_matmul(x, qt, impl=impl), expected) < 1e-5, impl
            np.testing.assert_allclose(
                int_matmul(xc, scale, qt, impl=impl),
                int_matmul(xc, scale, qt, impl="reference"),
                rtol=1e-5,
                atol=1e-5,
            )


def test_act_order_permutation_is_applied_by_every_path():
    w = jax.random.normal(jax.random.key(0), (16, 4))
    perm = jnp.asarray(np.random.default_rng(0).permutation(16), jnp.int32)
    spec = QuantSpec(bits=4, group_size=8)
    scale = jnp.full((2, 4), float(jnp.abs(w).max()) / 7)
    qt = quantize(w, spec, scale, perm=perm)
    xc = jnp.asarray(np.random.default_rng(1).integers(-7, 8, (3, 16)), jnp.int8)
    expected = xc.astype(jnp.float32) @ dequantize_matrix(qt)
    kmajor = relayout(qt, "kmajor")
    for weight, impl in [(qt, "reference"), (qt, "xla"), (qt, "blocked")] + [
        (kmajor, impl) for impl in ("reference", "xla", "auto")
    ]:
        name = (impl, weight.layout)
        assert _rel(int_matmul(xc, jnp.ones((1, 1)), weight, impl=impl), expected) < 1e-6, name
        y = w4a16_matmul(xc.astype(jnp.float32), weight, impl=impl)
        assert _rel(y, expected) < 1e-6, name


def test_kmajor_codes_go_to_the_paths_that_read_them(monkeypatch):
    """Auto runs K-major codes through the Mosaic kernels on a Hopper GPU where they take the
    weight, M and dtype, else through the xla form; the paths that read rows refuse them."""
    w = jax.random.normal(jax.random.key(0), (256, 256))
    kmajor = relayout(get_quantizer("minmax").quantize(w, QuantSpec()), "kmajor")
    w4a16 = {"backend": "gpu", "dtype": jnp.bfloat16}
    w4a4 = {"backend": "gpu", "w4a4": True, "dtype": jnp.int8}
    for hopper in (False, True):
        monkeypatch.setattr(mosaic_gpu, "on_hopper", lambda hopper=hopper: hopper)
        expected = "mosaic" if hopper else "xla"
        assert choose(kmajor, 16, **w4a16) == choose(kmajor, 4096, **w4a4) == expected
        assert choose(kmajor, 65, **w4a16) == "xla"  # more rows than the W4A16 kernel takes
        assert choose(kmajor, 16, backend="gpu", dtype=jnp.float32) == "xla"  # 16-bit x only
        assert choose(kmajor, 16, backend="cpu", dtype=jnp.bfloat16) == "xla"
    for impl in ("blocked", "pallas_interpret"):
        with pytest.raises(
            ValueError,
            match=rf"impl='{impl}' cannot read codes laid out 'kmajor'"
            r"; allowed for them: reference, xla, mosaic.*relayout\(qt, 'rows'\)",
        ):
            w4a16_matmul(jnp.ones((1, 256)), kmajor, impl=impl)
    with pytest.raises(ValueError, match="layout is 'kmajor'; allowed: 'rows'"):
        halves.split(kmajor)


def test_reference_int_matmul_runs_integer_dots_with_int32_accumulation():
    w = jax.random.normal(jax.random.key(0), (32, 8))
    qt = get_quantizer("minmax").quantize(w, QuantSpec(group_size=16))
    xc = jnp.ones((2, 32), jnp.int8)
    f = jax.jit(lambda xc, s, qt: int_matmul(xc, s, qt, impl="reference"))
    hlo = f.lower(xc, jnp.ones((2, 1)), qt).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    assert dots and all("xi8>" in d and d.endswith("xi32>") for d in dots)


def test_blocked_w4a4_sums_integers_exactly():
    """The CPU path's float32 block sums are exact integers: scaled by one, the result is the
    int32 reference bit for bit, even at the largest codes."""
    k, n = 1024, 64
    codes = jnp.where(jnp.arange(n) % 2 == 0, -8.0, 7.0) * jnp.ones((k, 1))  # extreme codes
    qt = quantize(codes, QuantSpec(group_size=512), jnp.ones((2, n)))
    xc = jnp.full((3, k), -128, jnp.int8)
    ones = jnp.ones((1, 1))
    blocked = np.asarray(int_matmul(xc, ones, qt, impl="blocked"))
    np.testing.assert_array_equal(blocked, np.asarray(int_matmul(xc, ones, qt, impl="reference")))
    assert np.abs(blocked).max() > 2**19  # large sums, still exact


def test_eight_bit_asymmetric_codes_are_centered_without_overflow():
    """``code - zero`` of 8-bit asymmetric codes spans [-255, 255]: it does not fit int8."""
    w = jax.random.normal(jax.random.key(0), (64, 8)) + 3.0  # zero point far from 128
    qt = get_quantizer("minmax").quantize(w, QuantSpec(bits=8, symmetric=False))
    x = jax.random.uniform(jax.random.key(1), (4, 64)) + 2.0
    act = QuantSpec(bits=8, symmetric=False, granularity="per_channel")
    scale, zero = act_params(x, act, get_quantizer("minmax"))
    xc = act_codes(x, scale, zero, act)
    assert xc.dtype == jnp.int16
    expected = act_fake_quant(x, scale, zero, act) @ dequantize_matrix(qt)
    assert _rel(int_matmul(xc, scale, qt), expected) < 1e-5
    w4 = get_quantizer("minmax").quantize(w, QuantSpec(bits=4))
    with pytest.raises(ValueError, match="needs int8 activation codes"):
        int_matmul(xc, scale, w4, impl="blocked")


def test_eight_bit_sums_past_int32_are_split_not_wrapped():
    """At 8-bit asymmetric codes a product reaches 255 * 255: K = 40,000 of them wrapped the
    int32 sum (-26051 for 40000). Codes of ones: every product the largest."""
    k = 40_000
    w = jnp.ones((k, 1), jnp.float32)
    spec = QuantSpec(bits=8, symmetric=False)
    qt = get_quantizer("minmax").quantize(w, spec)
    x = jnp.ones((1, k), jnp.float32)
    scale, zero = act_params(x, spec, get_quantizer("minmax"))
    xc = act_codes(x, scale, zero, spec)
    assert int(jnp.abs(xc).max()) == 255  # and the weight's centered codes: 255 * 255 * K > 2**31
    for impl in ("auto", "reference", "xla"):
        y = float(int_matmul(xc, scale, qt, impl=impl)[0, 0])
        assert y == pytest.approx(k, rel=1e-5), impl


def test_empty_batches_and_large_groups_run_on_every_cpu_path():
    w = jax.random.normal(jax.random.key(0), (20_000, 4))
    qt = get_quantizer("minmax").quantize(w, QuantSpec(group_size=10_000))
    x = jax.random.normal(jax.random.key(1), (3, 20_000))
    scale, zero = act_params(x, QuantSpec(granularity="per_channel"), get_quantizer("minmax"))
    xc = act_codes(x, scale, zero, QuantSpec(granularity="per_channel"))
    # a group of 10,000 rows: blocked's exact blocks (at most 8192) must still divide it
    np.testing.assert_allclose(
        int_matmul(xc, scale, qt), int_matmul(xc, scale, qt, impl="xla"), rtol=1e-5
    )
    small = get_quantizer("minmax").quantize(w[:64], QuantSpec(group_size=32))
    for impl in ("auto", "reference", "xla", "blocked"):
        assert w4a16_matmul(jnp.ones((0, 64)), small, impl=impl).shape == (0, 4), impl
        empty = int_matmul(jnp.ones((0, 64), jnp.int8), jnp.ones((0, 1)), small, impl=impl)
        assert empty.shape == (0, 4), impl


def test_inputs_must_be_rows_of_k():
    qt = get_quantizer("minmax").quantize(jnp.ones((32, 8)), QuantSpec())
    with pytest.raises(ValueError, match=r"x has shape \(2, 32, 32\); allowed: \[M, K\] with K=32"):
        w4a16_matmul(jnp.ones((2, 32, 32)), qt)
    with pytest.raises(ValueError, match=r"xc has shape \(2, 16\); allowed: \[M, K\] with K=32"):
        int_matmul(jnp.ones((2, 16), jnp.int8), jnp.ones((2, 1)), qt)


@pytest.mark.skipif(on_gpu(), reason="what XLA:CPU's compiled buffers hold")
def test_blocked_w4a16_never_holds_the_whole_float_weight():
    k, n = 1024, 512
    qt = get_quantizer("minmax").quantize(
        jax.random.normal(jax.random.key(0), (k, n)), QuantSpec(group_size=128)
    )
    x = jnp.ones((1, k))
    reference = jax.jit(lambda x, qt: w4a16_matmul(x, qt, impl="reference"))
    full = f"f32[{k},{n}]"
    assert full in reference.lower(x, qt).compile().as_text()  # the check can see a weight
    # at this small N the 8 MiB budget would take all of K in one block: ask for 128 rows
    blocked = jax.jit(lambda x, qt: w4a16_blocked(x, qt, rows=128))
    text = blocked.lower(x, qt).compile().as_text()
    assert full not in text and f"f32[{k},{n // 2}]" not in text
    assert _rel(blocked(x, qt), reference(x, qt)) < 1e-5


def test_block_rows_fit_the_budget_and_never_straddle_a_scale_row():
    assert block_rows(4096, 4096, 128) == 512  # 8 MiB of float32
    assert block_rows(8192, 28672, 128, m=128) == 512  # at least 4 M rows
    assert block_rows(4096, 4096, 128, m=16, within_scale_row=True) == 128
    assert block_rows(8192, 28672, 128) == 64  # a divisor of the group
    assert block_rows(384, 1536, 384) == 384  # per-channel: capped at K
    assert block_rows(4000, 8192, 40) % 40 == 0
    assert 40 % block_rows(4000, 65536, 40) == 0


def test_dispatch_by_backend_shape_and_width():
    w = jax.random.normal(jax.random.key(0), (256, 256))
    q4 = get_quantizer("minmax").quantize(w, QuantSpec(group_size=128))
    q8 = get_quantizer("minmax").quantize(w, QuantSpec(bits=8))
    assert choose(q4, 1, backend="cpu") == "blocked"
    per_channel = get_quantizer("minmax").quantize(w, QuantSpec())
    for (op, operands), rows in GPU_CHOICES.items():  # the measured table, bound by bound
        dtype = {"16-bit": jnp.bfloat16, "float32": jnp.float32}.get(operands, jnp.int8)
        weight = per_channel if operands == "int8 per-channel" else q4
        previous = 0
        for bound, impl in rows:
            for m in (previous + 1, bound or 8192):
                got = choose(weight, m, backend="gpu", w4a4=op == "w4a4", dtype=dtype)
                assert got == impl, (op, operands, m)
            previous = bound
    assert choose(q8, 1, backend="cpu") == "reference"
    assert choose(q8, 1, backend="gpu") == "xla"
    assert choose(q4, 1, backend="tpu") == "xla"
    odd = get_quantizer("minmax").quantize(w[:, :100], QuantSpec(group_size=128))
    assert choose(odd, 1, backend="gpu") == "xla"  # 50 columns per half: no 128-wide block


def test_an_empty_batch_takes_no_kernel_on_a_gpu():
    """A launch grid of no row blocks is not a valid CUDA launch: M=0 goes to XLA's dot."""
    w = jax.random.normal(jax.random.key(0), (256, 256))
    qt = get_quantizer("minmax").quantize(w, QuantSpec(group_size=128))
    assert choose(qt, 0, backend="gpu", dtype=jnp.bfloat16) == "xla"
    assert choose(qt, 0, backend="gpu", w4a4=True, dtype=jnp.int8) == "xla"
    assert "M=0" in pallas_gpu.unsupported(qt, 0)
    per_channel = get_quantizer("minmax").quantize(w, QuantSpec())
    assert "M=0" in mosaic_gpu.unsupported(relayout(per_channel, "kmajor"), 0)


def test_a_table_row_naming_the_mosaic_kernels_falls_back_where_they_cannot_run(monkeypatch):
    w = jax.random.normal(jax.random.key(0), (256, 256))
    per_channel = get_quantizer("minmax").quantize(w, QuantSpec())
    grouped = get_quantizer("minmax").quantize(w, QuantSpec(group_size=32))
    monkeypatch.setattr(mosaic_gpu, "on_hopper", lambda: True)
    monkeypatch.setitem(GPU_CHOICES, ("w4a4", "int8 per-channel"), ((None, "mosaic"),))
    monkeypatch.setitem(GPU_CHOICES, ("w4a16", "16-bit"), ((None, "mosaic"),))
    w4a4 = {"backend": "gpu", "w4a4": True, "dtype": jnp.int8}
    assert choose(per_channel, 4096, **w4a4) == "mosaic"
    w4a16 = {"backend": "gpu", "dtype": jnp.bfloat16}
    assert choose(per_channel, 16, **w4a16) == "mosaic"
    assert choose(per_channel, 65, **w4a16) == "xla"  # more rows than the kernel takes
    assert choose(grouped, 16, **w4a16) == "xla"  # group size 32: one group is not a step


def test_bad_implementation_names_the_allowed_ones():
    qt = get_quantizer("minmax").quantize(jnp.ones((16, 4)), QuantSpec())
    with pytest.raises(ValueError, match="allowed: auto, reference, xla, blocked, pallas"):
        w4a16_matmul(jnp.ones((1, 16)), qt, impl="triton")
    if not on_gpu():
        for impl in ("pallas", "mosaic"):
            with pytest.raises(ValueError, match=rf"impl='{impl}' needs a GPU.*pallas_interpret"):
                w4a16_matmul(jnp.ones((1, 16)), qt, impl=impl)
    q8 = get_quantizer("minmax").quantize(jnp.ones((16, 4)), QuantSpec(bits=8))
    with pytest.raises(ValueError, match=r"impl='blocked' cannot read 8-bit codes.*widths: 4"):
        w4a16_matmul(jnp.ones((1, 16)), q8, impl="blocked")


def test_2_and_3_bit_weights_route_to_paths_that_unpack_them():
    """Their bytes are not nibbles: auto picks a path that reads them through `int_codes`, and
    the nibble paths asked for by name refuse them, naming the widths they take."""
    kx, kw = jax.random.split(jax.random.key(0))
    w = jax.random.normal(kw, (32, 8))
    x = jax.random.normal(kx, (3, 32))
    xc = jnp.asarray(np.random.default_rng(0).integers(-7, 8, (3, 32)), jnp.int8)
    for bits in (2, 3):
        qt = get_quantizer("minmax").quantize(
            w, QuantSpec(bits=bits, symmetric=False, group_size=16)
        )
        assert choose(qt, 1, backend="cpu") == "reference"
        assert all(choose(qt, m, backend="gpu", dtype=jnp.bfloat16) == "xla" for m in (1, 4096))
        assert choose(qt, 16, backend="gpu", w4a4=True, dtype=jnp.int8) == "xla"
        for impl in (impl for impl, widths in WIDTHS.items() if bits not in widths):
            refused = rf"impl='{impl}' cannot read {bits}-bit.*widths: 4"
            with pytest.raises(ValueError, match=refused):
                w4a16_matmul(x, qt, impl=impl)
            with pytest.raises(ValueError, match=refused):
                int_matmul(xc, jnp.ones((1, 1)), qt, impl=impl)
        with pytest.raises(ValueError, match=rf"nibbles only; got {bits}-bit.*widths: 4"):
            halves.split(qt)
    # the 3-bit weight through auto (the hypothesis tests above cover 2..8 bits at random)
    assert _rel(w4a16_matmul(x, qt), x @ dequantize_matrix(qt)) < 1e-6
    expected = xc.astype(jnp.float32) @ dequantize_matrix(qt)
    assert _rel(int_matmul(xc, jnp.ones((1, 1)), qt), expected) < 1e-6
