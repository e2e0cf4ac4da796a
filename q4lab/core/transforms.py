"""Input transforms of a quantized layer: per-channel smoothing and a randomised Hadamard rotation.

A layer ``y = x @ W`` (``x[M, K]``, ``W[K, N]``) is computed as ``y = T(x) @ W'`` with
``T(x) = x @ R`` and ``W' = R⁻¹ @ W``: equal in float, but ``T(x)`` and ``W'`` quantize better.

  smoothing  ``R = diag(1 / s)``: SmoothQuant (Xiao et al. 2023) picks, per input channel,
             ``s = max|X|^alpha / max|W|^(1-alpha)``, moving activation outliers into the weight
  rotation   ``R = D · H``: random signs ``D`` (from a stored seed) and the block-diagonal
             normalised Walsh-Hadamard matrix ``H`` (QuaRot, Ashkboos et al. 2024). Orthogonal,
             so it spreads an outlier channel over all channels without changing norms. Sizes
             that are not a power of two use a Paley factor (384 = 12·32, see `hadamard`).

With both, ``R = diag(1 / s) · D · H``. The rotation costs its seed (4 bytes), not a matrix;
the smoothing costs ``K`` float32 scales. Both are counted by the ledger (`QTensor.arrays`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


def hadamard_block(k: int) -> int:
    """The largest power of two dividing ``k``."""
    if k < 1:
        raise ValueError(f"input size {k} is invalid; allowed: >= 1")
    return k & -k


@functools.partial(jax.jit, static_argnums=1)  # one program when called eagerly, not op by op
def fwht(x: jax.Array, block: int) -> jax.Array:
    """The normalised Walsh-Hadamard transform of each ``block`` of the last axis (Sylvester
    order: ``fwht(x, b) == x @ H_b / sqrt(b)`` blockwise), in ``log2(block)`` butterflies."""
    *lead, k = x.shape
    if block & (block - 1) or k % block:
        raise ValueError(
            f"block={block} is invalid for size {k}; allowed: a power of two dividing it"
        )
    y = x.reshape(*lead, k // block, block)
    h = 1
    while h < block:
        y = y.reshape(*lead, k // block, block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = jnp.stack([a + b, a - b], axis=-2)
        h *= 2
    return y.reshape(*lead, k) * (1.0 / math.sqrt(block))


def paley_hadamard(n: int) -> np.ndarray:
    """A Hadamard matrix of order ``n = q + 1`` for a prime ``q ≡ 3 (mod 4)`` (Paley's first
    construction): ``±1`` entries, ``H @ H.T == n * I``."""
    q = n - 1
    if q < 3 or q % 4 != 3 or any(q % d == 0 for d in range(2, int(q**0.5) + 1)):
        raise ValueError(f"order {n} is invalid; allowed: q + 1 for a prime q = 3 (mod 4)")
    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in residues else -1 for i in range(1, q)])
    jacobsthal = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]
    core = np.zeros((n, n), np.int64)
    core[0, 1:], core[1:, 0], core[1:, 1:] = 1, -1, jacobsthal
    return np.eye(n, dtype=np.int64) + core


# orders 4m with a Paley matrix, by odd part m: K = 12 * 2^p or 20 * 2^p is rotated whole
_PALEY = {3: 12, 5: 20}


def hadamard_factors(k: int) -> tuple[int, int]:
    """``(m, b)`` with ``k = c * m * b``: the rotation of a size-``k`` input is ``c`` blocks of
    ``H_m ⊗ H_b`` (``H_m`` a Paley matrix, ``m`` in 1, 12, 20; ``H_b`` Sylvester's). One block
    (``c = 1``) whenever ``k`` is a power of two, or 12 or 20 times one (384 = 12·32,
    1536 = 12·128); otherwise blocks of the largest power of two dividing ``k``."""
    b = hadamard_block(k)
    m = _PALEY.get(k // b, 1)
    if m > 1 and b >= 4:
        return m, b // 4
    return 1, b


def hadamard(x: jax.Array, *, transpose: bool = False) -> jax.Array:
    """``x[..., K] @ H`` (``transpose``: ``@ H.T``) for the normalised orthogonal Hadamard
    matrix of `hadamard_factors`: a fast Walsh-Hadamard transform and, for 12 or 20 times a
    power of two, a small dense Paley factor (not symmetric, hence ``transpose``)."""
    k = x.shape[-1]
    m, b = hadamard_factors(k)
    if m == 1:
        return fwht(x, b)
    *lead, _ = x.shape
    y = fwht(x.reshape(*lead, k // (m * b), m, b), b)
    h = paley_hadamard(m) / np.sqrt(m)
    h = jnp.asarray(h.T if transpose else h, x.dtype)
    return jnp.einsum("...ij,ik->...kj", y, h, precision=jax.lax.Precision.HIGHEST).reshape(x.shape)


@functools.partial(jax.jit, static_argnums=1)  # one program when called eagerly, not op by op
def random_signs(seed: jax.Array, k: int) -> jax.Array:
    """``k`` random ±1 (float32) from a uint32 seed; the same on every backend (threefry)."""
    return jax.random.rademacher(jax.random.key(seed), (k,), dtype=jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class InputTransform:
    """``T(x) = x @ R`` (module docstring). ``smooth``: float32 ``[K]`` divisors or None;
    ``seed``: uint32 scalar of the rotation's signs, or None (no rotation)."""

    smooth: jax.Array | None = None
    seed: jax.Array | None = None

    def _rotate(self, x: jax.Array) -> jax.Array:
        k = x.shape[-1]
        return hadamard(x * random_signs(self.seed, k))

    def apply(self, x: jax.Array) -> jax.Array:
        """``x[..., K] @ R`` in float32: what the layer quantizes and multiplies."""
        x = x.astype(jnp.float32)
        if self.smooth is not None:
            x = x / self.smooth
        return x if self.seed is None else self._rotate(x)

    def fold(self, w2d: jax.Array) -> jax.Array:
        """``R⁻¹ @ w2d[K, N]`` (float32): the weight that meets ``apply(x)``."""
        w = w2d.astype(jnp.float32)
        if self.smooth is not None:
            w = w * self.smooth[:, None]
        if self.seed is not None:  # R⁻¹ = Hᵀ D, and Hᵀ w = (wᵀ H)ᵀ
            w = self._rotate(w.T).T
        return w

    def unfold(self, w2d: jax.Array) -> jax.Array:
        """``R @ w2d[K, N]``: the weight in the original basis (``unfold(fold(w)) == w``)."""
        w = w2d.astype(jnp.float32)
        if self.seed is not None:  # R = D H: H first on the rows (H w = (wᵀ Hᵀ)ᵀ), then D
            k = w.shape[0]
            w = hadamard(w.T, transpose=True).T * random_signs(self.seed, k)[:, None]
        if self.smooth is not None:
            w = w / self.smooth[:, None]
        return w

    def covariance(self, h: jax.Array) -> jax.Array:
        """``Rᵀ H R`` of a symmetric ``[K, K]`` second moment of ``x`` (e.g. GPTQ's Hessian):
        the second moment of ``apply(x)``."""
        return self.apply(self.apply(h).T)

    def arrays(self) -> dict[str, jax.Array]:
        """The arrays held (what the ledger counts)."""
        held = {"smooth": self.smooth, "seed": self.seed}
        return {name: a for name, a in held.items() if a is not None}


def smoothing_scales(
    act_absmax: jax.Array, w_absmax: jax.Array, alpha: float, eps: float = 1e-5
) -> jax.Array:
    """SmoothQuant's per-channel ``s = max|X|^alpha / max|W|^(1-alpha)`` (float32 ``[K]``). Channels
    that never fire or have no weight keep ``s = 1``."""
    a = jnp.maximum(act_absmax.astype(jnp.float32), 0.0)
    w = jnp.maximum(w_absmax.astype(jnp.float32), 0.0)
    s = jnp.power(jnp.maximum(a, eps), alpha) / jnp.power(jnp.maximum(w, eps), 1.0 - alpha)
    return jnp.where((a > 0) & (w > 0), s, 1.0)


__all__ = [
    "InputTransform",
    "fwht",
    "hadamard",
    "hadamard_block",
    "hadamard_factors",
    "paley_hadamard",
    "random_signs",
    "smoothing_scales",
]
