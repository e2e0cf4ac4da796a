"""A `Task` bundles a Flax model, its data, its float training and its metric; a registry by name.

Float baselines are trained once per (task, seed) and cached on disk under ``cache_dir()``:
``$Q4LAB_CACHE`` if set, else ``~/.cache/q4lab``. The cache key includes the model, training
config and data provenance, so changing any of them retrains instead of reusing a stale file.
"""

from __future__ import annotations

import dataclasses
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

from q4lab.data import Splits
from q4lab.train import TrainConfig, train_classifier


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


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task: model + data + training + accuracy."""

    name: str
    model: nn.Module
    data: Callable[[int], Splits]  # seed -> splits
    train_config: TrainConfig
    calib_batch_size: int = 128
    eval_batch_size: int = 1024

    def splits(self, seed: int) -> Splits:
        return _splits(self, seed)

    def calibration(self, seed: int, size: int | None = None) -> list[jax.Array]:
        """The first ``size`` examples (default: all) of the calibration split, held out from
        training, as batches of ``calib_batch_size``."""
        x = self.splits(seed).x_calib
        if size is not None and not 1 <= size <= len(x):
            raise ValueError(
                f"calib_size={size} is invalid for task {self.name!r}; allowed: 1..{len(x)}"
            )
        x = x[:size]
        step = self.calib_batch_size
        return [jnp.asarray(x[i : i + step]) for i in range(0, len(x), step)]

    def sample_input(self, seed: int) -> jax.Array:
        """Two test inputs: enough to trace the model and find its layers."""
        return jnp.asarray(self.splits(seed).x_test[:2])

    def _cache_path(self, seed: int) -> Path:
        key = repr((self.model, self.train_config, self.splits(seed).provenance))
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return cache_dir() / "baselines" / f"{self.name}-seed{seed}-{digest}.msgpack"

    def baseline(self, seed: int) -> dict:
        """Float parameters, trained once with ``seed`` and then read from the cache."""
        path = self._cache_path(seed)
        data = self.splits(seed)
        if path.exists():
            template = self.model.init(jax.random.key(0), jnp.asarray(data.x_train[:1]))["params"]
            return serialization.from_bytes(template, path.read_bytes())
        params = train_classifier(
            self.model, data.x_train, data.y_train, seed=seed, config=self.train_config
        )
        atomic_write_bytes(path, serialization.to_bytes(params))
        return params

    def accuracy(self, forward: Callable[[jax.Array], jax.Array], seed: int) -> float:
        """Top-1 accuracy of ``forward`` (logits) on the test split."""
        data = self.splits(seed)
        correct = 0
        for i in range(0, len(data.x_test), self.eval_batch_size):
            logits = forward(jnp.asarray(data.x_test[i : i + self.eval_batch_size]))
            correct += int(
                np.sum(np.asarray(jnp.argmax(logits, -1)) == data.y_test[i : i + len(logits)])
            )
        return correct / len(data.x_test)


@functools.lru_cache(maxsize=8)
def _splits(task: Task, seed: int) -> Splits:
    return task.data(seed)


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
