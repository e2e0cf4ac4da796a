"""A `Task` bundles a Flax model, its data, its float baseline and its metric; a registry by name.

Float baselines are trained once per (task, seed) and cached on disk under ``cache_dir()``:
``$Q4LAB_CACHE`` if set, else ``~/.cache/q4lab``. The cache key includes the model, training
config and data provenance, so changing any of them retrains instead of reusing a stale file.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

Forward = Callable[[jax.Array], jax.Array]


def cache_dir() -> Path:
    """Where baselines are cached: ``$Q4LAB_CACHE`` or ``~/.cache/q4lab``."""
    return Path(os.environ.get("Q4LAB_CACHE", Path.home() / ".cache" / "q4lab"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Task(abc.ABC):
    """A model, its float baseline, its data and its metric.

    ``metric`` names the headline metric that `metrics` returns (with ``fp_<metric>`` for the
    float model); ``higher_is_better`` says which way it points (perplexity: lower).
    """

    name: str
    model: nn.Module
    metric: str
    higher_is_better: bool = True
    calib_batch_size: int = 128
    eval_batch_size: int = 1024

    @abc.abstractmethod
    def baseline(self, seed: int) -> dict:
        """Float parameters for ``seed`` (trained once and cached, or loaded)."""

    @abc.abstractmethod
    def calibration_inputs(self, seed: int) -> np.ndarray:
        """Every calibration input, held out from training and from the test inputs."""

    @abc.abstractmethod
    def test_inputs(self, seed: int) -> np.ndarray:
        """Inputs of the evaluation split (the first ones also trace the model)."""

    @abc.abstractmethod
    def metrics(self, forward: Forward, fp_forward: Forward, seed: int) -> dict[str, float]:
        """``metric`` of the quantized ``forward`` and ``fp_<metric>`` of the float one (and
        any further metrics of the task)."""

    def calibration(self, seed: int, size: int | None = None) -> list[jax.Array]:
        """The first ``size`` calibration inputs (default: all), in batches."""
        count = self.calibration_count(seed)
        if size is not None and not 1 <= size <= count:
            raise ValueError(
                f"calib_size={size} is invalid for task {self.name!r}; allowed: 1..{count}"
            )
        return self.calibration_batches(seed, count if size is None else size)

    def calibration_count(self, seed: int) -> int:
        """How many calibration inputs there are."""
        return len(self.calibration_inputs(seed))

    def calibration_batches(self, seed: int, size: int) -> list[jax.Array]:
        """The first ``size`` calibration inputs as batches of ``calib_batch_size``."""
        x = self.calibration_inputs(seed)[:size]
        step = self.calib_batch_size
        return [jnp.asarray(x[i : i + step]) for i in range(0, len(x), step)]

    def sample_input(self, seed: int) -> jax.Array:
        """Two test inputs: enough to trace the model and find its layers."""
        return jnp.asarray(self.test_inputs(seed)[:2])

    def check_input(self, seed: int) -> jax.Array:
        """One evaluation batch, on which real and fake-quant outputs are compared."""
        return jnp.asarray(self.test_inputs(seed)[: self.eval_batch_size])


def cached_params(name: str, seed: int, key: str, template: Callable[[], dict], make) -> dict:
    """Parameters from ``cache_dir()/baselines``, or ``make()`` once and cached atomically.

    ``key`` must describe everything the parameters depend on (model, training, data
    provenance): its hash is in the file name, so a change trains anew instead of reusing.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = cache_dir() / "baselines" / f"{name}-seed{seed}-{digest}.msgpack"
    if path.exists():
        return serialization.from_bytes(template(), path.read_bytes())
    params = make()
    atomic_write_bytes(path, serialization.to_bytes(params))
    return params


_TASKS: dict[str, Callable[[], Task]] = {}


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Decorator for a zero-argument factory building a task."""

    def deco(factory: Callable[[], Task]) -> Callable[[], Task]:
        _TASKS[name] = factory
        return factory

    return deco


def available_tasks() -> tuple[str, ...]:
    return tuple(sorted(_TASKS))


@functools.cache
def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(available_tasks())}")
    return _TASKS[name]()
