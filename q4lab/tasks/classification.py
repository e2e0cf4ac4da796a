"""The small classification tasks: digits with an MLP, MNIST-1D with a 1-D CNN."""

from __future__ import annotations

from q4lab import data
from q4lab.models import CNN1D, MLP
from q4lab.tasks.base import Task, register_task
from q4lab.train import TrainConfig


@register_task("digits-mlp")
def digits_mlp() -> Task:
    """scikit-learn digits (8x8), MLP 64-256-128-10."""
    return Task(
        name="digits-mlp",
        model=MLP(hidden=(256, 128)),
        data=data.digits,
        train_config=TrainConfig(epochs=40, batch_size=32, learning_rate=2e-3),
    )


@register_task("mnist1d-cnn")
def mnist1d_cnn() -> Task:
    """MNIST-1D, three 1-D convolutions (32/64/64 channels, kernel 5) and a dense head."""
    return Task(
        name="mnist1d-cnn",
        model=CNN1D(),
        data=data.mnist1d,
        train_config=TrainConfig(epochs=60, batch_size=64, learning_rate=3e-3, weight_decay=1e-3),
    )
