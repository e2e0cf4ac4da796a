"""`QuantSpec`: how a tensor is quantized (bit width, symmetry, granularity, scale dtype).

Glossary used across `q4lab.core`:
  K  the contraction (input) size of a weight seen as a matrix ``[K, N]``.
  N  the output size.
  g  the group size along K; G = K // g groups.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np

from q4lab.core import packing

Granularity = Literal["per_tensor", "per_channel", "per_group"]


def group_label(group_size: object) -> str:
    """A group-size field's label: 0 -> ``"per-channel"``, 32 -> ``"g32"``."""
    return "per-channel" if int(group_size) == 0 else f"g{int(group_size)}"


GRANULARITIES: tuple[str, ...] = ("per_tensor", "per_channel", "per_group")
SCALE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
ZERO_POINTS: tuple[str, ...] = ("int", "float")
SYMMETRIC_GRIDS: tuple[str, ...] = ("max", "half_step")
MIN_BITS, MAX_BITS = 2, 8


def _bad(field: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"QuantSpec.{field}={value!r} is invalid; allowed: {allowed}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """How to quantize one tensor. Frozen and hashable, so it can be a static jit argument.

    ``QuantSpec(bits=4, group_size=128)`` is 4-bit symmetric with groups of 128 along K.
    """

    bits: int = 4  # code width, 2..8; 4 is the headline, the others are for comparison sweeps
    symmetric: bool = True  # signed codes and no zero point; else unsigned codes and a zero point
    granularity: Granularity | None = None  # one scale per tensor / output channel / group;
    # None means "per_group" when group_size is set, else "per_channel"
    group_size: int | None = None  # g, along the input axis; only with granularity="per_group"
    scale_dtype: str = "float32"  # the dtype scales are stored (and rounded) in
    zero_point: str = "int"  # asymmetric: "int" codes' zero points, packed as codes; "float":
    # real-valued ones in the scale dtype (HQQ), which shift w / scale before rounding
    symmetric_grid: str = "max"  # symmetric: "max" puts amax on the largest code (QuaRot);
    # "half_step" puts it half a step beyond (GPTQ's reference, PyTorch's observers): scale
    # amax / (2^(b-1) - 1/2), the codes' bins tile [-amax, amax], so a step 1/(2^b - 1) of the
    # range, and +amax rounds down to the largest code (see `range_steps`)

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int | np.integer):
            raise _bad("bits", self.bits, f"an int in {MIN_BITS}..{MAX_BITS}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise _bad("bits", self.bits, f"an int in {MIN_BITS}..{MAX_BITS}")
        if not isinstance(self.symmetric, bool | np.bool_):
            raise _bad("symmetric", self.symmetric, "True or False")
        granularity = self.granularity
        if granularity is None:
            granularity = "per_group" if self.group_size is not None else "per_channel"
            object.__setattr__(self, "granularity", granularity)
        if granularity not in GRANULARITIES:
            raise _bad("granularity", granularity, ", ".join(GRANULARITIES))
        if granularity == "per_group":
            g = self.group_size
            if isinstance(g, bool) or not isinstance(g, int | np.integer) or g < 1:
                raise _bad("group_size", g, "a positive int when granularity='per_group'")
        elif self.group_size is not None:
            raise _bad("group_size", self.group_size, f"None when granularity={granularity!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise _bad("scale_dtype", self.scale_dtype, ", ".join(SCALE_DTYPES))
        if self.zero_point not in ZERO_POINTS:
            raise _bad("zero_point", self.zero_point, ", ".join(ZERO_POINTS))
        if self.float_zero and self.symmetric:
            raise _bad("zero_point", self.zero_point, "'int' when symmetric (no zero point)")
        if self.symmetric_grid not in SYMMETRIC_GRIDS:
            raise _bad("symmetric_grid", self.symmetric_grid, ", ".join(SYMMETRIC_GRIDS))
        if self.symmetric_grid != "max" and not self.symmetric:
            raise _bad("symmetric_grid", self.symmetric_grid, "'max' when asymmetric")

    @property
    def float_zero(self) -> bool:
        """True when zero points are real numbers held in the scale dtype (`zero_point`)."""
        return self.zero_point == "float"

    @property
    def qmin(self) -> int:
        """Smallest code: -2^(b-1) for symmetric (signed) codes, 0 for asymmetric ones."""
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest code: 2^(b-1)-1 for symmetric (signed) codes, 2^b-1 for asymmetric ones."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def range_steps(self) -> float:
        """Steps from 0 to the range's end (``scale = amax / range_steps``, symmetric; ``hi - lo``
        over ``qmax`` steps, asymmetric): ``qmax``, or 2^(b-1) - 1/2 for the ``half_step``
        symmetric grid, whose 2^b - 1 bins around codes -qmax..qmax tile ``[-amax, amax]``.
        The most negative code, -2^(b-1), then holds -amax alone, where it rounds a tie to even;
        the grid is the ``max`` one with its range clipped to qmax / (qmax + 1/2) of amax."""
        return self.qmax + 0.5 if self.symmetric_grid == "half_step" else float(self.qmax)

    @property
    def codes_per_word(self) -> int:
        """Codes in one stored word (`q4lab.core.packing`): 4 at 2 bits, 8 at 3, 2 at 4, else 1."""
        return packing.codes_per_word(self.bits)

    @property
    def word_bytes(self) -> int:
        """Bytes of one stored word: 3 for 3-bit codes (8 codes), else 1."""
        return packing.word_bytes(self.bits)

    @property
    def stored_bits(self) -> int:
        """Bits one code takes in storage, padding aside: ``bits`` for 2..4, 8 for 5..8."""
        return packing.stored_bits(self.bits)

    @property
    def nibbles(self) -> bool:
        """True when codes are stored two per byte as XLA's int4 nibbles (bits == 4): the only
        layout the half-column kernels of `q4lab.ops` read."""
        return self.bits == 4

    def packed_length(self, n: int) -> int:
        """Bytes of one stored row of ``n`` codes (or zero points): whole words, zero-padded."""
        return packing.packed_length(n, self.bits)

    @property
    def jnp_scale_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.scale_dtype)

    def num_groups(self, k: int) -> int:
        """Scale rows for a weight with K inputs (1 unless per-group)."""
        return k // self.group_size if self.granularity == "per_group" else 1

    def check_input_size(self, k: int, *, where: str = "") -> None:
        """Raise a ValueError naming group_size if it does not divide a weight with K inputs."""
        if self.granularity == "per_group" and k % self.group_size:
            divisors = [d for d in range(1, k + 1) if k % d == 0]
            at = f" for {where}" if where else ""
            raise ValueError(
                f"QuantSpec.group_size={self.group_size} does not divide the input size K={k}{at};"
                f" allowed group sizes for this layer: {divisors} (a recipe also takes any size"
                " of at least K: one group, per-channel)"
            )

    def describe(self) -> str:
        """A short label, e.g. 'W4 sym g128 f16' or 'W8 asym per-channel'."""
        gran = {"per_tensor": "per-tensor", "per_channel": "per-channel"}.get(
            self.granularity, f"g{self.group_size}"
        )
        sym = "sym" if self.symmetric else "asym float-zero" if self.float_zero else "asym"
        sym += " half-step" if self.symmetric_grid == "half_step" else ""
        dtype = {"float32": "", "bfloat16": " bf16", "float16": " f16"}[self.scale_dtype]
        return f"W{self.bits} {sym} {gran}{dtype}"
