"""The Flax BERT encoder on the real all-MiniLM-L6-v2 weights against the embeddings that
sentence-transformers (torch) computed for the same sentences (see make_minilm_reference.py)."""

from pathlib import Path

import jax
import numpy as np

from q4lab.adapters import adapt
from q4lab.models.bert import encode, load_minilm, load_tokenizer

REFERENCE = Path(__file__).with_name("minilm_reference.npz")


def test_embeddings_match_sentence_transformers():
    reference = np.load(REFERENCE)
    model, params = load_minilm()
    ids = encode(load_tokenizer(), [str(s) for s in reference["sentences"]])
    embeddings = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, ids))
    np.testing.assert_allclose(embeddings, reference["embeddings"], rtol=0, atol=1e-5)
    # 22.6M parameters; the model card's 22.7M counts the pooler, which sentence embeddings skip
    assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == 22_565_376


def test_every_linear_layer_is_quantizable():
    model, params = load_minilm()
    layers = adapt(model).layers(params, encode(load_tokenizer(), ["a sentence"]))
    names = {layer.path.split("/", 1)[1] for layer in layers}
    assert names == {"attention/query", "attention/key", "attention/value", "attention/out",
                     "ffn/up", "ffn/down"}  # fmt: skip
    assert len(layers) == 6 * 6
