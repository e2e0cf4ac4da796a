"""Classification datasets that need no network, split into train / calibration / test."""

from __future__ import annotations

import dataclasses
import hashlib
from importlib.metadata import version

import numpy as np


@dataclasses.dataclass(frozen=True)
class Splits:
    """Arrays of one dataset. ``calib`` is held out from training, for quantizer calibration."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    provenance: str  # where the data came from (package and version, split arguments)

    def training_digest(self) -> str:
        """What a float baseline is trained on, as text for its key: the training split's size
        and the sha256 of its labels (integers, so the same on every CPU). Any change of the
        split (its sizes, its seeded order) changes it, even where ``provenance`` does not."""
        labels = hashlib.sha256(np.ascontiguousarray(self.y_train, "<i8").tobytes()).hexdigest()
        return f"train split of {len(self.y_train)}, labels sha256 {labels[:16]}"


def digits(seed: int, *, test_fraction: float = 0.25, calib_size: int = 128) -> Splits:
    """scikit-learn's bundled 8x8 digits (1797 images), pixels scaled to [0, 1], a seeded split."""
    import sklearn
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(test_fraction * len(x))
    test, calib, train = np.split(order, [n_test, n_test + calib_size])
    return Splits(
        x[train],
        y[train],
        x[calib],
        x[test],
        y[test],
        f"sklearn {sklearn.__version__} digits, test_fraction={test_fraction}, "
        f"calib_size={calib_size}",
    )


def mnist1d(seed: int, *, calib_size: int = 500) -> Splits:
    """MNIST-1D (Greydanus 2020) generated locally by the ``mnist1d`` package with its default
    arguments (4000 train + 1000 test, length 40; deterministic, no download). The calibration
    set is a seeded slice of the training set, which is then not trained on. Inputs ``[N, 40, 1]``.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x = np.asarray(data["x"], np.float32)[..., None]
    y = np.asarray(data["y"], np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    calib, train = order[:calib_size], order[calib_size:]
    x_test = np.asarray(data["x_test"], np.float32)[..., None]
    return Splits(
        x[train],
        y[train],
        x[calib],
        x_test,
        np.asarray(data["y_test"], np.int32),
        f"mnist1d {version('mnist1d')} make_dataset(get_dataset_args()) defaults, "
        f"calib_size={calib_size}",
    )
