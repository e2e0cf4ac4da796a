"""Training losses for quantization-aware training: ``loss(outputs, targets, fp_outputs)``.

The task's own loss uses labels; distillation uses the float model's outputs instead, so a
pretrained model without labels can be fine-tuned.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

# (outputs of the trained model, targets or None, outputs of the float model or None) -> scalar
Loss = Callable[[jax.Array, jax.Array | None, jax.Array | None], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, _fp: jax.Array | None) -> jax.Array:
    """Mean cross-entropy of integer ``labels`` (any leading shape) under ``logits``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def kl_to_float(logits: jax.Array, _labels: jax.Array | None, fp_logits: jax.Array) -> jax.Array:
    """Distillation: mean KL(float model's distribution || quantized model's), per position."""
    teacher = jax.nn.log_softmax(fp_logits.astype(jnp.float32))
    student = jax.nn.log_softmax(logits.astype(jnp.float32))
    return jnp.mean(jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1))


def cosine_distance(emb: jax.Array, _labels: jax.Array | None, fp_emb: jax.Array) -> jax.Array:
    """Distillation of an encoder: mean ``1 - cos`` to the float model's embeddings."""
    a = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
    b = fp_emb / jnp.linalg.norm(fp_emb, axis=-1, keepdims=True)
    return jnp.mean(1.0 - jnp.sum(a * b, axis=-1))


LOSSES: tuple[str, ...] = ("task", "distill")
# the losses above that read the float model's outputs (`q4lab.qat.train` computes them only
# for ``QATConfig(loss="distill")``)
DISTILLATION = frozenset({kl_to_float, cosine_distance})


def check_loss(kind: str, task: str, allowed: tuple[str, ...] = LOSSES) -> None:
    """Raise a ValueError naming ``qat_loss`` unless ``kind`` is one of ``allowed``."""
    if kind not in allowed:
        raise ValueError(f"qat_loss={kind!r} is invalid for task {task!r}; allowed: {allowed}")
