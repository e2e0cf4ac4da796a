"""A `Task` bundles a Flax model, its data, its float baseline and its metric; a registry by name.

A trained float baseline is found in this order (`baseline_params`):

1. the published baselines shipped with q4lab (``q4lab/baselines/``, see `q4lab.baselines`):
   files trained by this code on the machine their index names, checked against the sha256
   in the index. Float training on XLA:CPU is not bitwise portable across instruction sets,
   so loading them is what lets results tables reproduce on another CPU.
   ``Q4LAB_PUBLISHED=none`` skips them (train here instead);
2. the cache under ``cache_dir()``: ``$Q4LAB_CACHE`` if set, else ``~/.cache/q4lab``;
3. training here (with a progress bar on a terminal), then caching the result.

Published and cached files are named ``<task>-seed<seed>-<digest>.npz``, where the digest hashes
the baseline's key (model, training config, data provenance and the training split: its size
and a checksum of what it holds), so changing any of them trains anew instead of reusing a stale
file.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from q4lab.adapters import RowMask, example_count
from q4lab.baselines.store import (
    digest,
    find_published,
    params_from_bytes,
    params_to_bytes,
    published_dir,
)
from q4lab.files import atomic_write_bytes
from q4lab.losses import Loss

Forward = Callable[[jax.Array], jax.Array]
Sampler = Callable[[np.random.Generator], tuple[jax.Array, jax.Array | None]]
# the sweep field calib_padding: whether calibration statistics count padded positions
CALIB_PADDING = ("include", "exclude")


def cache_dir() -> Path:
    """Where baselines are cached: ``$Q4LAB_CACHE`` or ``~/.cache/q4lab``."""
    return Path(os.environ.get("Q4LAB_CACHE", Path.home() / ".cache" / "q4lab"))


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
        """Float parameters for ``seed`` (published, cached or trained; or pretrained)."""

    def baseline_training(self, seed: int) -> BaselineTraining | None:
        """How the float baseline of ``seed`` is trained here; None for a pretrained model."""
        return None

    @abc.abstractmethod
    def calibration_inputs(self, seed: int) -> np.ndarray:
        """Every calibration input, held out from training and from the test inputs: an array
        of examples along axis 0, or a tuple or dict of them for a model of several inputs."""

    @abc.abstractmethod
    def test_inputs(self, seed: int) -> np.ndarray:
        """Inputs of the evaluation split (the first ones also trace the model), laid out as
        `calibration_inputs`."""

    @abc.abstractmethod
    def metrics(self, forward: Forward, fp_forward: Forward, seed: int) -> dict[str, float]:
        """``metric`` of the quantized ``forward`` and ``fp_<metric>`` of the float one (and
        any further metrics of the task)."""

    def qat_sampler(self, seed: int, batch_size: int) -> Sampler:
        """Draws training batches ``(inputs, targets or None)`` for quantization-aware training
        from data disjoint from the test inputs."""
        raise ValueError(f"task {self.name!r} has no training data for quantization-aware training")

    def qat_loss(self, kind: str) -> Loss:
        """The training loss: ``"task"`` (the task's own, with labels) or ``"distill"`` (to the
        float model's outputs)."""
        raise ValueError(f"task {self.name!r} has no loss for quantization-aware training")

    def calibration(self, seed: int, size: int | None = None) -> list[jax.Array]:
        """The first ``size`` calibration inputs (default: all), in batches."""
        count = self.calibration_count(seed)
        if size is not None and not 1 <= size <= count:
            raise ValueError(
                f"calib_size={size} is invalid for task {self.name!r}; allowed: 1..{count}"
            )
        return self.calibration_batches(seed, count if size is None else size)

    def calibration_count(self, seed: int) -> int:
        """How many calibration inputs there are (of several inputs, a tuple or dict of
        arrays: their rows)."""
        return example_count(self.calibration_inputs(seed))

    def calibration_batches(self, seed: int, size: int) -> list[Any]:
        """The first ``size`` calibration inputs as batches of ``calib_batch_size``."""
        x, step = self.calibration_inputs(seed), self.calib_batch_size
        size = min(size, example_count(x))
        return [_take(x, i, min(i + step, size)) for i in range(0, size, step)]

    def row_mask(self) -> RowMask | None:
        """A function of a batch of inputs: True where its positions hold data (``[B, T]``
        for token ids, False on padding), so that calibration can leave padding out; None for a
        task whose inputs are never padded. Return the same function at every call (a
        module-level one): compiled calibration is cached by it."""
        return None

    def calibration_row_mask(self, padding: str) -> RowMask | None:
        """The row mask calibration uses under the sweep field ``calib_padding``: none for
        ``"include"`` (every position counts, padding too), `row_mask` for ``"exclude"``."""
        if padding not in CALIB_PADDING:
            raise ValueError(
                f"calib_padding={padding!r} is invalid; allowed: {', '.join(CALIB_PADDING)}"
            )
        if padding == "include":
            return None
        mask = self.row_mask()
        if mask is None:
            raise ValueError(
                f"calib_padding='exclude' is invalid for task {self.name!r}: it marks no "
                "padding (a task with padded inputs overrides Task.row_mask()); allowed: "
                "'include'"
            )
        if not callable(mask):
            raise ValueError(
                f"task {self.name!r}: row_mask() returned a {type(mask).__name__}; allowed: a "
                "function of a batch of inputs returning booleans, True where it holds data"
            )
        return mask

    def sample_input(self, seed: int) -> Any:
        """Two test inputs: enough to trace the model and find its layers."""
        return _take(self.test_inputs(seed), 0, 2)

    def check_input(self, seed: int) -> Any:
        """One evaluation batch, on which real and fake-quant outputs are compared."""
        return _take(self.test_inputs(seed), 0, self.eval_batch_size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BaselineTraining:
    """A float baseline to train: its identity and the training itself."""

    task: str  # the task's registered name
    seed: int
    key: str  # what the parameters depend on: model, training config, data, training split
    train: Callable[[bool | None], dict]  # progress (None: bar only on a terminal) -> params

    @property
    def file_name(self) -> str:
        """``<task>-seed<seed>-<digest of key>.npz``: published and cached files share it."""
        return f"{self.task}-seed{self.seed}-{digest(self.key)}.npz"


_ANNOUNCED: set[str] = set()


def _announce(once: str, message: str) -> None:
    """One line on stderr (printed above any progress bar), once per process per ``once``."""
    if once not in _ANNOUNCED:
        _ANNOUNCED.add(once)
        tqdm.write(f"q4lab: {message}", file=sys.stderr)


def baseline_params(training: BaselineTraining, *, progress: bool | None = None) -> dict:
    """The parameters of ``training``: published, else cached, else trained and cached.

    Published baselines are used only when their index records exactly ``training.key``; one
    whose file fails its checksum raises `q4lab.baselines.ChecksumError` naming the file.
    """
    label = f"{training.task} seed {training.seed}"
    found = find_published(training.file_name, training.key, published_dir())
    if found is not None:
        params, entry = found
        made = entry.get("produced", {})
        _announce(
            training.file_name,
            f"{label}: float baseline loaded from the published {training.file_name} "
            f"(sha256 verified; trained on {made.get('cpu_isa', '?')}, "
            f"jax {made.get('jax_version', '?')})",
        )
        return params
    path = cache_dir() / "baselines" / training.file_name
    if path.exists():
        _announce(training.file_name, f"{label}: float baseline loaded from the cache {path}")
        return params_from_bytes(path.read_bytes())
    _announce(
        training.file_name,
        f"{label}: no published or cached float baseline for this configuration; training it "
        f"here (cached afterwards in {path})",
    )
    params = training.train(progress)
    atomic_write_bytes(path, params_to_bytes(params))
    return params


def _take(inputs: Any, start: int, stop: int) -> Any:
    """Examples ``start:stop`` of ``inputs`` (an array, or a tuple or dict of them) as JAX
    arrays."""
    return jax.tree.map(lambda a: jnp.asarray(a[start:stop]), inputs)


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
        raise ValueError(
            f"unknown task {name!r}; registered: {', '.join(available_tasks())} (a task of one's "
            "own registers when its module is imported: an experiment file imports it, other "
            "commands take q4lab --plugin <its module>)"
        )
    return _TASKS[name]()
