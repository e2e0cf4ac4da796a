"""Compare every registered quantizer on synthetic weight matrices (the pre-harness main job).

Matrices: Gaussian, Student-t (df=3, heavy tails) and Gaussian with a few outlier input rows
(the pattern activation-outlier papers report for LLM weights). Error is the relative squared
error ``||W - W_hat||^2 / ||W||^2`` and its SQNR in dB; bits per weight come from the size ledger.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from q4lab.core import QuantSpec, dequantize, size_ledger
from q4lab.quantizers import available, check_quantized, get_quantizer


def synthetic_weights(k: int = 512, n: int = 512, seed: int = 0) -> dict[str, np.ndarray]:
    """Named float32 matrices ``[K, N]`` with different tails, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    gaussian = rng.standard_normal((k, n)).astype(np.float32) / math.sqrt(k)
    student = rng.standard_t(df=3, size=(k, n)).astype(np.float32) / math.sqrt(3 * k)
    outliers = gaussian.copy()
    rows = rng.choice(k, size=max(1, k // 128), replace=False)
    outliers[rows] *= 20.0
    return {"gaussian": gaussian, "student_t3": student, "outlier_rows": outliers}


DEFAULT_SPECS = (
    QuantSpec(bits=4),
    QuantSpec(bits=4, group_size=128, scale_dtype="float16"),
    QuantSpec(bits=4, group_size=32, scale_dtype="float16"),
    QuantSpec(bits=4, group_size=32, symmetric=False, scale_dtype="float16"),
    QuantSpec(bits=3, group_size=32, scale_dtype="float16"),
)


def compare_quantizers(
    weights: dict[str, np.ndarray] | None = None,
    specs: tuple[QuantSpec, ...] = DEFAULT_SPECS,
    quantizers: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """One row per (matrix, spec, quantizer) with error, SQNR and stored/ideal bits per weight.

    Quantizers that need calibration statistics (e.g. a Hessian) are skipped: they have none here.
    """
    weights = synthetic_weights() if weights is None else weights
    names = [q for q in (quantizers or available()) if not get_quantizer(q).needs]
    rows, done = [], set()
    for matrix, w in weights.items():
        energy = float(np.sum(np.square(w, dtype=np.float64)))
        for spec in specs:
            for name in names:
                quantizer = get_quantizer(name)
                own = spec  # HQQ: asymmetric, with real-valued zero points
                if quantizer.zero_point == "float":
                    own = dataclasses.replace(spec, symmetric=False, zero_point="float")
                if (matrix, own, name) in done:  # two specs that differ in symmetry alone
                    continue
                done.add((matrix, own, name))
                qt = check_quantized(quantizer.quantize(w, own), quantizer, own, w, 0, matrix)
                err = float(np.sum(np.square(np.asarray(dequantize(qt)) - w, dtype=np.float64)))
                ledger = size_ledger(qt)
                rows.append(
                    {
                        "matrix": matrix,
                        "spec": own.describe(),
                        "quantizer": name,
                        "rel_sq_error": err / energy,
                        "sqnr_db": 10 * math.log10(energy / err) if err else math.inf,
                        "bits_per_weight": ledger.bits_per_weight,
                        "ideal_bits_per_weight": ledger.ideal_bits_per_weight,
                    }
                )
    return pd.DataFrame(rows)
