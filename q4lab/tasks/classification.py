"""Classification tasks: a model trained here on a bundled dataset, scored by test accuracy.
Digits with an MLP, MNIST-1D with a 1-D CNN."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from q4lab import data
from q4lab.data import Splits
from q4lab.losses import Loss, check_loss, cross_entropy, kl_to_float
from q4lab.models import CNN1D, MLP
from q4lab.tasks.base import (
    BaselineTraining,
    Forward,
    Sampler,
    Task,
    baseline_params,
    register_task,
)
from q4lab.train import TrainConfig, train_classifier


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
    """Model + seeded splits + training config; metric: top-1 accuracy on the test split."""

    name: str
    model: nn.Module
    data: object  # seed -> Splits (a function; part of the task's identity)
    train_config: TrainConfig
    metric: str = "accuracy"
    higher_is_better: bool = True
    calib_batch_size: int = 128
    eval_batch_size: int = 1024

    def splits(self, seed: int) -> Splits:
        return _splits(self, seed)

    def calibration_inputs(self, seed: int) -> np.ndarray:
        return self.splits(seed).x_calib

    def test_inputs(self, seed: int) -> np.ndarray:
        return self.splits(seed).x_test

    def baseline(self, seed: int) -> dict:
        """Float parameters: published, cached, or trained here with ``seed`` (then cached)."""
        return baseline_params(self.baseline_training(seed))

    def baseline_training(self, seed: int) -> BaselineTraining:
        split = self.splits(seed)
        return BaselineTraining(
            task=self.name,
            seed=seed,
            key=repr((self.model, self.train_config, split.provenance, split.training_digest())),
            train=lambda progress: train_classifier(
                self.model,
                split.x_train,
                split.y_train,
                seed=seed,
                config=self.train_config,
                progress=progress,
                desc=f"train {self.name} seed {seed}",
            ),
        )

    def qat_sampler(self, seed: int, batch_size: int) -> Sampler:
        """Random batches of the training split, with their labels."""
        split = self.splits(seed)

        def draw(rng: np.random.Generator) -> tuple[jax.Array, jax.Array]:
            i = rng.integers(0, len(split.x_train), batch_size)
            return jnp.asarray(split.x_train[i]), jnp.asarray(split.y_train[i])

        return draw

    def qat_loss(self, kind: str) -> Loss:
        """Cross-entropy with the labels, or KL to the float model's logits."""
        check_loss(kind, self.name)
        return cross_entropy if kind == "task" else kl_to_float

    def accuracy(self, forward: Forward, seed: int) -> float:
        """Top-1 accuracy of ``forward`` (logits) on the test split."""
        split = self.splits(seed)
        correct = 0
        for i in range(0, len(split.x_test), self.eval_batch_size):
            logits = forward(jnp.asarray(split.x_test[i : i + self.eval_batch_size]))
            labels = split.y_test[i : i + len(logits)]
            correct += int(np.sum(np.asarray(jnp.argmax(logits, -1)) == labels))
        return correct / len(split.x_test)

    def metrics(self, forward: Forward, fp_forward: Forward, seed: int) -> dict[str, float]:
        return {
            "accuracy": self.accuracy(forward, seed),
            "fp_accuracy": self.accuracy(fp_forward, seed),
        }


@functools.lru_cache(maxsize=8)
def _splits(task: ClassificationTask, seed: int) -> Splits:
    return task.data(seed)


@register_task("digits-mlp")
def digits_mlp() -> Task:
    """scikit-learn digits (8x8), MLP 64-256-128-10."""
    return ClassificationTask(
        name="digits-mlp",
        model=MLP(hidden=(256, 128)),
        data=data.digits,
        train_config=TrainConfig(epochs=40, batch_size=32, learning_rate=2e-3),
    )


@register_task("mnist1d-cnn")
def mnist1d_cnn() -> Task:
    """MNIST-1D, three 1-D convolutions (32/64/64 channels, kernel 5) and a dense head."""
    return ClassificationTask(
        name="mnist1d-cnn",
        model=CNN1D(),
        data=data.mnist1d,
        train_config=TrainConfig(epochs=60, batch_size=64, learning_rate=3e-3, weight_decay=1e-3),
    )
