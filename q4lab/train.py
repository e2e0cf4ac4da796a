"""Float training with optax (the baselines every quantized model is compared with).

Both loops show a progress bar with an ETA and the running loss on stderr (``progress=None``:
only on a terminal). The loss is computed inside the compiled step whether or not a bar shows,
so the trained parameters never depend on ``progress``.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 30  # passes over the training set
    batch_size: int = 64
    learning_rate: float = 3e-3  # peak of a cosine schedule, AdamW
    weight_decay: float = 1e-4


def _bar(total: int, desc: str, unit: str, progress: bool | None) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    config: TrainConfig,
    progress: bool | None = None,
    desc: str = "train",
) -> dict:
    """Cross-entropy training with AdamW and a cosine schedule; returns the ``params`` dict.

    Deterministic in ``seed`` (initialisation and batch order). One jitted epoch = a ``lax.scan``
    over batches, so the whole run compiles once. ``progress``: a bar over epochs showing the
    epoch's mean loss (None: only on a terminal); ``desc`` labels it.
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
            loss, grads = jax.value_and_grad(loss_fn)(p, *batch)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (p, s), losses = jax.lax.scan(step, (p, s), (xs, ys))
        return p, s, losses.mean()

    rng = np.random.default_rng(seed)
    n = steps_per_epoch * config.batch_size
    with _bar(config.epochs, desc, "epoch", progress) as bar:
        for _ in range(config.epochs):
            order = rng.permutation(len(x))[:n]
            xs = jnp.asarray(x[order]).reshape(steps_per_epoch, config.batch_size, *x.shape[1:])
            ys = jnp.asarray(y[order]).reshape(steps_per_epoch, config.batch_size)
            params, opt_state, loss = epoch(params, opt_state, xs, ys)
            if not bar.disable:
                bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
            bar.update(1)
    return params


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMTrainConfig:
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 2e-3  # peak; linear warm-up then cosine decay, AdamW
    warmup: int = 100
    weight_decay: float = 0.01
    clip_norm: float = 1.0


def train_language_model(
    model: nn.Module,
    train: np.ndarray,
    *,
    context: int,
    seed: int,
    config: LMTrainConfig,
    progress: bool | None = None,
    desc: str = "train",
) -> dict:
    """Next-byte cross-entropy on random windows of ``train`` (uint8 bytes); returns params.

    Deterministic in ``seed``. Steps run in jitted chunks of a ``lax.scan`` (one compile).
    ``progress``: a bar over steps, advanced per chunk, showing the chunk's mean loss (None: only
    on a terminal); ``desc`` labels it.
    """
    key = jax.random.key(seed)
    params = model.init(key, jnp.zeros((1, context), jnp.int32))["params"]
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, min(config.warmup, config.steps // 2), config.steps
    )
    opt = optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(schedule, weight_decay=config.weight_decay),
    )
    opt_state = opt.init(params)
    data = jnp.asarray(train, jnp.int32)

    def loss_fn(p, windows):
        logits = model.apply({"params": p}, windows[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:]).mean()

    chunk = 50

    @jax.jit
    def run(p, s, key):
        def step(carry, key):
            p, s = carry
            starts = jax.random.randint(key, (config.batch_size,), 0, len(data) - context - 1)
            windows = jax.vmap(lambda i: jax.lax.dynamic_slice(data, (i,), (context + 1,)))(starts)
            loss, grads = jax.value_and_grad(loss_fn)(p, windows)
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (p, s), losses = jax.lax.scan(step, (p, s), jax.random.split(key, chunk))
        return p, s, losses.mean()

    chunks = -(-config.steps // chunk)
    with _bar(chunks * chunk, desc, "step", progress) as bar:
        for i in range(chunks):
            params, opt_state, loss = run(params, opt_state, jax.random.fold_in(key, i))
            if not bar.disable:
                bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
            bar.update(chunk)
    return params
