"""Multi-head self-attention with its four projections as plain ``nn.Dense`` layers named
``query``, ``key``, ``value`` and ``out`` (what recipes match), shared by the BERT encoder and
the GPT decoder."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class SelfAttention(nn.Module):
    """``x [B, T, width]`` attends where ``mask`` (broadcast to ``[B, heads, T, T]``) is True."""

    width: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        head = self.width // self.heads

        def split(name):
            return nn.Dense(self.width, name=name)(x).reshape(b, t, self.heads, head)

        q, k, v = split("query"), split("key"), split("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head)
        scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        context = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        return nn.Dense(self.width, name="out")(context.reshape(b, t, self.width))
