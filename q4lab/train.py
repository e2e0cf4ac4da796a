"""Float training with optax (the baselines every quantized model is compared with)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 30  # passes over the training set
    batch_size: int = 64
    learning_rate: float = 3e-3  # peak of a cosine schedule, AdamW
    weight_decay: float = 1e-4


def train_classifier(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, seed: int, config: TrainConfig
) -> dict:
    """Cross-entropy training with AdamW and a cosine schedule; returns the ``params`` dict.

    Deterministic in ``seed`` (initialisation and batch order). One jitted epoch = a ``lax.scan``
    over batches, so the whole run compiles once.
    """
    key = jax.random.key(seed)
    params = model.init(key, jnp.asarray(x[:1]))["params"]
    steps_per_epoch = len(x) // config.batch_size
    schedule = optax.cosine_decay_schedule(config.learning_rate, config.epochs * steps_per_epoch)
    opt = optax.adamw(schedule, weight_decay=config.weight_decay)
    opt_state = opt.init(params)

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(p, s, xs, ys):
        def step(carry, batch):
            p, s = carry
            grads = jax.grad(loss_fn)(p, *batch)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        (p, s), _ = jax.lax.scan(step, (p, s), (xs, ys))
        return p, s

    rng = np.random.default_rng(seed)
    n = steps_per_epoch * config.batch_size
    for _ in range(config.epochs):
        order = rng.permutation(len(x))[:n]
        xs = jnp.asarray(x[order]).reshape(steps_per_epoch, config.batch_size, *x.shape[1:])
        ys = jnp.asarray(y[order]).reshape(steps_per_epoch, config.batch_size)
        params, opt_state = epoch(params, opt_state, xs, ys)
    return params
