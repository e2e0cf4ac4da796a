"""The transformer tasks on small slices: MiniLM on real weights, a tiny byte-level GPT trained
here, both through `evaluate` and the sweep runner."""

import dataclasses

import numpy as np
import pytest

from q4lab.core import QuantSpec
from q4lab.data.text import docstring_sentences, stdlib_source
from q4lab.evaluate import evaluate
from q4lab.models.gpt import GPTConfig
from q4lab.quantize_model import quantize_model
from q4lab.recipe import ActSpec, Recipe
from q4lab.report import best_points
from q4lab.sweep import WandbSettings, load_experiment, run_experiment
from q4lab.tasks import register_task
from q4lab.tasks.text import ByteLMTask, SentenceEmbeddingTask, retrieval_agreement
from q4lab.train import LMTrainConfig

pytestmark = pytest.mark.slow

TINY_LM = ByteLMTask(
    name="charlm-tiny",
    config=GPTConfig(context=32, width=64, layers=2, heads=2),
    train_config=LMTrainConfig(steps=150, batch_size=16, learning_rate=3e-3, warmup=20),
    corpus_bytes=400_000,
    calib_windows=32,
    eval_windows=64,
)
register_task("charlm-tiny")(lambda: TINY_LM)


@pytest.fixture(autouse=True)
def _cache(task_cache):
    pass


def test_offline_text_is_real_and_pinned():
    sentences = docstring_sentences()
    assert len(sentences) > 2500 and len(set(sentences)) == len(sentences)
    assert all(30 <= len(s) <= 200 and s[0].isupper() for s in sentences)
    source = stdlib_source()
    assert len(source) == 4_000_000 and b"def " in source
    assert "CPython" in SentenceEmbeddingTask().provenance()


def test_retrieval_agreement_of_identical_and_perturbed_embeddings():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 8))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert retrieval_agreement(e, e) == {"top1_agreement": 1.0, "top10_agreement": 1.0}
    noisy = retrieval_agreement(e + rng.normal(scale=0.3, size=e.shape), e)
    assert 0 < noisy["top10_agreement"] < 1


def test_minilm_w8_is_near_float_and_w4_gptq_beats_round_to_nearest():
    task = SentenceEmbeddingTask(eval_sentences=48, calib_sentences=16)
    w8 = evaluate(task, Recipe.single(weight=QuantSpec(bits=8)))
    assert w8["metric"] == "cosine" and w8["fp_score"] == 1.0
    assert w8["cosine"] > 0.999 and w8["top10_agreement"] > 0.9
    g128 = QuantSpec(group_size=128, scale_dtype="float16")
    rtn = evaluate(task, Recipe.single(weight=g128))
    gptq = evaluate(task, Recipe.single(quantizer="gptq", weight=g128, sequential=False))
    assert 0.8 < rtn["cosine"] < gptq["cosine"] < 1.0
    assert gptq["bits_per_weight"] == 4.125  # 36 linear layers, g128, float16 scales
    assert gptq["fake_rel_diff"] == 0.0


def test_minilm_calibration_without_padding_is_that_of_the_unpadded_sentences():
    """MiniLM's batches are padded (a third of the calibration rows were [PAD]); with the
    task's row mask a layer's Hessian is that of the same sentences run without padding (each
    length in its own batch: attention masks padding, so real tokens' activations agree to
    float rounding), and GPTQ's result moves."""
    import jax.numpy as jnp

    from q4lab.adapters import adapt
    from q4lab.calibrate import Calibrator
    from q4lab.models.bert import encode

    task = SentenceEmbeddingTask(eval_sentences=48, calib_sentences=16)
    tokenizer = task._loaded[2]
    pool = docstring_sentences()[:200]
    lengths = [len(e.ids) for e in tokenizer.encode_batch(pool)]
    by_length = {n: [s for s, m in zip(pool, lengths, strict=True) if m == n][:4] for n in (9, 17)}
    params = task.baseline(0)
    needs = {"layer_5/ffn/down": {"hessian"}, "layer_2/attention/query": {"hessian"}}
    padded = [jnp.asarray(encode(tokenizer, [*by_length[9], *by_length[17]], 32))]
    unpadded = [jnp.asarray(encode(tokenizer, sentences)) for sentences in by_length.values()]
    adapter = adapt(task.model, params)
    masked = Calibrator(adapter, needs, row_mask=task.row_mask())(params, padded)
    plain = Calibrator(adapter, needs)(params, unpadded)
    counted = Calibrator(adapter, needs)(params, padded)
    for path in needs:
        h, reference = np.asarray(masked[path]["hessian"]), np.asarray(plain[path]["hessian"])
        np.testing.assert_allclose(h, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
        off = np.abs(np.asarray(counted[path]["hessian"]) - reference).max()
        assert off > 0.05 * np.abs(reference).max()  # the [PAD] rows weigh in without the mask
    g128 = QuantSpec(group_size=128, scale_dtype="float16")
    recipe = Recipe.single(quantizer="gptq", weight=g128, sequential=False)
    both = [evaluate(task, recipe, calib_padding=padding) for padding in ("include", "exclude")]
    assert both[0]["cosine"] != both[1]["cosine"]
    with pytest.raises(
        ValueError, match="calib_padding='exclude' is invalid for task 'charlm-tiny'"
    ):
        evaluate(TINY_LM, recipe, calib_padding="exclude")


def test_tiny_charlm_trains_below_unigram_runs_under_the_sweep_runner_and_quantizes(tmp_path):
    """One test, so one worker trains the tiny GPT (two would each train it)."""
    path = tmp_path / "lm.py"
    path.write_text(
        "from q4lab.sweep import Sweep\n"
        "sweep = Sweep(name='lm', grid={'task': ['charlm-tiny'], 'bits': [8, 3]})\n"
    )
    experiment = load_experiment(path)  # validated against the GPT's layers
    table = run_experiment(
        experiment, tmp_path, wandb=WandbSettings(mode="disabled"), progress=False
    )
    best = best_points(table)
    assert set(best["metric"]) == {"perplexity"}
    delta = best.set_index("bits")["delta_score"]
    fp = table["fp_perplexity"].iloc[0]
    assert abs(delta[8]) < 0.01 * fp < delta[3]  # W8 ~ float; W3 clearly worse (higher)
    w8 = table[table["bits"] == 8].iloc[0]
    assert w8["score"] == w8["perplexity"] and not w8["higher_is_better"]
    assert fp < 0.7 * w8["unigram_perplexity"]
    assert w8["bits_per_byte"] == pytest.approx(np.log2(w8["perplexity"]))
    recipe = Recipe.single(weight=QuantSpec(group_size=32), act=ActSpec())
    w4a4 = evaluate(TINY_LM, recipe)
    assert w4a4["perplexity"] > w8["perplexity"]
    # the next byte at each position agrees (it took one argmax over positions and bytes)
    qm = quantize_model(
        TINY_LM.model,
        TINY_LM.baseline(0),
        recipe,
        sample_input=TINY_LM.sample_input(0),
        calibration=TINY_LM.calibration(0),
    )
    x = TINY_LM.check_input(0)
    same = np.asarray(qm.apply(x)).argmax(-1) == np.asarray(qm.apply(x, fake=True)).argmax(-1)
    assert same.shape == x.shape and w4a4["fake_agreement"] == same.mean() > 0.95


def test_task_options_are_part_of_the_task():
    assert dataclasses.replace(TINY_LM, corpus_bytes=300_000) != TINY_LM
