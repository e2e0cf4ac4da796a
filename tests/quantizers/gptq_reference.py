"""An independent numpy (float64) GPTQ, written from Algorithm 1 of the paper without blocking:
every column's error is applied to all later columns at once. Torch-style layout ``W[N, K]``
(rows: outputs, columns: inputs), unlike q4lab's ``[K, N]``, to keep the two codes apart.

Returns the codes in logical column order, the scale and zero per (group, output), the group of
every column, and the unrounded code values ``w / s + z`` (to recognise rounding ties).
"""

from __future__ import annotations

import numpy as np


def _minmax_params(cols: np.ndarray, bits: int, symmetric: bool, scale_dtype: str):
    """Min-max scale and zero per row of ``cols[N, g]`` (as q4lab's min-max clipping)."""
    lo, hi = cols.min(axis=1), cols.max(axis=1)
    if symmetric:
        scale = np.maximum(np.abs(lo), np.abs(hi)) / (2 ** (bits - 1) - 1)
    else:
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        scale = (hi - lo) / (2**bits - 1)
    scale = scale.astype(np.float32).astype(scale_dtype).astype(np.float64)
    scale[scale == 0] = 1.0
    if symmetric:
        return scale, np.zeros_like(scale)
    zero = np.clip(np.round(-lo / scale), 0, 2**bits - 1)
    return scale, zero


def gptq_reference(
    w_kn: np.ndarray,
    hessian: np.ndarray,
    *,
    bits: int,
    symmetric: bool,
    group_size: int | None,
    act_order: bool = False,
    static_groups: bool = False,
    percdamp: float = 0.01,
    scale_dtype: str = "float32",
):
    W = np.array(w_kn, np.float64).T  # [N, K]
    H = np.array(hessian, np.float64)
    n, k = W.shape
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
    g = group_size or k

    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    static = [_minmax_params(W[:, j : j + g], bits, symmetric, scale_dtype) for j in range(0, k, g)]

    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(k)
    W, H = W[:, order], H[order][:, order]
    H = H + percdamp * np.mean(np.diag(H)) * np.eye(k)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: H^-1 = U^T U

    codes = np.zeros((n, k))
    unrounded = np.zeros((n, k))
    group_of_col = np.zeros(k, int)
    params = {}
    for i in range(k):
        if group_size is None:
            if i == 0:
                params[0] = _minmax_params(W, bits, symmetric, scale_dtype)
            gid = 0
        elif static_groups:
            gid = order[i] // g
            params[gid] = static[gid]
        else:
            gid = i // g
            if i % g == 0:
                params[gid] = _minmax_params(W[:, i : i + g], bits, symmetric, scale_dtype)
        scale, zero = params[gid]
        group_of_col[order[i]] = gid
        x = W[:, i] / scale + zero
        c = np.clip(np.round(x), qmin, qmax)
        q = (c - zero) * scale
        err = (W[:, i] - q) / U[i, i]
        W[:, i:] -= np.outer(err, U[i, i:])
        codes[:, order[i]] = c
        unrounded[:, order[i]] = x
    scales = np.stack([params[j][0] for j in sorted(params)])
    zeros = np.stack([params[j][1] for j in sorted(params)])
    return codes.T, scales, zeros, group_of_col, unrounded.T
