"""A small GPT-style decoder in Flax Linen: byte tokens, learned positions, pre-LayerNorm blocks
with causal self-attention and a GELU MLP, a final LayerNorm and an untied output projection.
Linear layers are ``nn.Dense``: ``block_<i>/attention/{query,key,value,out}``,
``block_<i>/{up,down}`` (the MLP) and ``head``."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from q4lab.models.attention import SelfAttention


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256  # bytes
    context: int = 128
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4


class Block(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
        attention = SelfAttention(c.width, c.heads, name="attention")
        x = x + attention(nn.LayerNorm(name="attention_norm")(x), causal)
        h = nn.LayerNorm(name="mlp_norm")(x)
        h = nn.Dense(c.width * c.mlp_ratio, name="up")(h)
        return x + nn.Dense(c.width, name="down")(jax.nn.gelu(h))


class GPT(nn.Module):
    """Bytes ``int32 [B, T]`` (T <= context) -> next-byte logits ``[B, T, vocab]``."""

    config: GPTConfig = GPTConfig()

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        c = self.config
        positions = jnp.arange(tokens.shape[1])[None, :]
        x = nn.Embed(c.vocab_size, c.width, name="embed")(tokens)
        x = x + nn.Embed(c.context, c.width, name="positions")(positions)
        for i in range(c.layers):
            x = Block(c, name=f"block_{i}")(x)
        return nn.Dense(c.vocab_size, name="head")(nn.LayerNorm(name="final_norm")(x))
