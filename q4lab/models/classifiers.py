"""Small Flax Linen classifiers, written as a user would (nothing q4lab-specific inside)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
    """``Dense -> ReLU`` blocks and a linear head; inputs are flattened."""

    hidden: Sequence[int] = (256, 128)
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.classes)(x)


class CNN1D(nn.Module):
    """1-D convolutions (``[batch, length, channels]``), then a dense head."""

    channels: Sequence[int] = (32, 64, 64)
    kernel: int = 5
    hidden: int = 128
    classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.channels):
            stride = 1 if i == 0 else 2
            x = nn.relu(nn.Conv(width, (self.kernel,), strides=(stride,), padding="SAME")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.classes)(x)
