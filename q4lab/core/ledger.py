"""The size ledger: exact bytes of a parameter pytree in which some leaves are `QTensor`s.

Two figures per quantized leaf, never mixed silently:
  stored  the bytes really held (``nbytes`` of codes, scales, zeros, permutation, and the input
          transform's smoothing scales and rotation seed). 2-, 3- and 4-bit codes are packed at
          their width (`q4lab.core.packing`), each row of N padded to whole words (4, 8 and 2
          codes); 5..8-bit codes take a byte each. So stored >= ideal.
  ideal   the packed size: ``bits`` per code and per integer zero point, plus scales (and
          real-valued zero points, HQQ's, held as scales are), permutation and
          transform as stored. Equal to stored for 2..4-bit codes when every row of codes and of
          zero points fills whole words (e.g. 3-bit codes with N a multiple of 8).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from q4lab.core.qtensor import QTensor


@dataclasses.dataclass(frozen=True)
class LeafSize:
    """Bytes of one leaf. Float leaves have only ``float_bytes``; ``bits`` is None for them."""

    path: str
    params: int  # logical number of values
    bits: int | None
    codes: int = 0
    scales: int = 0
    zeros: int = 0
    perm: int = 0
    transform: int = 0
    float_bytes: int = 0
    ideal_bits: float = 0.0  # packed size in bits (see module docstring)

    @property
    def stored(self) -> int:
        return self.codes + self.scales + self.zeros + self.perm + self.transform + self.float_bytes

    @property
    def quantized(self) -> bool:
        return self.bits is not None


def _leaf_size(path: str, leaf: object) -> LeafSize:
    if isinstance(leaf, QTensor):
        held = {name: int(a.nbytes) for name, a in leaf.arrays().items()}
        packed_zeros = leaf.zero is not None and not leaf.spec.float_zero
        zero_count = math.prod(leaf.scale.shape) if packed_zeros else 0
        float_zeros = 0 if packed_zeros else held.get("zero", 0)  # held as scales are (HQQ)
        transform = held.get("smooth", 0) + held.get("seed", 0)
        meta_bits = 8 * (held["scale"] + float_zeros + held.get("perm", 0) + transform)
        return LeafSize(
            path=path,
            params=leaf.size,
            bits=leaf.spec.bits,
            codes=held["codes"],
            scales=held["scale"],
            zeros=held.get("zero", 0),
            perm=held.get("perm", 0),
            transform=transform,
            ideal_bits=leaf.spec.bits * (leaf.size + zero_count) + meta_bits,
        )
    arr = np.asarray(leaf) if not hasattr(leaf, "nbytes") else leaf
    return LeafSize(path=path, params=int(np.size(arr)), bits=None, float_bytes=int(arr.nbytes))


@dataclasses.dataclass(frozen=True)
class Ledger:
    """Per-leaf sizes and the totals a results row reports."""

    leaves: tuple[LeafSize, ...]

    @property
    def total_bytes(self) -> int:
        return sum(leaf.stored for leaf in self.leaves)

    @property
    def float_bytes(self) -> int:
        return sum(leaf.float_bytes for leaf in self.leaves)

    @property
    def quantized_bytes(self) -> int:
        return sum(leaf.stored for leaf in self.leaves if leaf.quantized)

    @property
    def quantized_params(self) -> int:
        return sum(leaf.params for leaf in self.leaves if leaf.quantized)

    @property
    def params(self) -> int:
        return sum(leaf.params for leaf in self.leaves)

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per quantized weight (codes, scales, zeros, perm, transform); NaN if none."""
        n = self.quantized_params
        return 8 * self.quantized_bytes / n if n else float("nan")

    @property
    def ideal_bits_per_weight(self) -> float:
        """Packed bits per quantized weight (see module docstring); NaN if none."""
        n = self.quantized_params
        return sum(leaf.ideal_bits for leaf in self.leaves if leaf.quantized) / n if n else math.nan

    @property
    def fp32_bytes(self) -> int:
        """Size of the same parameters all in float32: the reference for compression."""
        return 4 * self.params

    @property
    def compression(self) -> float:
        """fp32 bytes / stored bytes."""
        return self.fp32_bytes / self.total_bytes

    def totals(self) -> dict[str, float | int]:
        """The flat figures a results row carries."""
        return {
            "total_bytes": self.total_bytes,
            "quantized_bytes": self.quantized_bytes,
            "float_bytes": self.float_bytes,
            "params": self.params,
            "quantized_params": self.quantized_params,
            "bits_per_weight": self.bits_per_weight,
            "ideal_bits_per_weight": self.ideal_bits_per_weight,
            "fp32_bytes": self.fp32_bytes,
            "compression": self.compression,
        }

    def rows(self) -> list[dict[str, object]]:
        """One dict per leaf (for a pandas DataFrame)."""
        return [dataclasses.asdict(leaf) | {"stored": leaf.stored} for leaf in self.leaves]


def size_ledger(params: object) -> Ledger:
    """Walk a pytree (QTensors kept whole) and count the bytes every leaf holds."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, QTensor))
    return Ledger(tuple(_leaf_size(jax.tree_util.keystr(path), leaf) for path, leaf in flat))
