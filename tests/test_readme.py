"""The README's Python examples run as written: quantizing a bundled model with a recipe, then
saving and loading it."""

from pathlib import Path

import numpy as np

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def python_block(heading: str) -> str:
    """The first ```python block after ``heading``."""
    after = README.split(f"\n{heading}\n", 1)[1]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_the_quantizing_and_saving_examples_run(tmp_path, monkeypatch, task_cache):
    monkeypatch.chdir(tmp_path)  # the saving example writes out/charlm-w4a4
    namespace: dict = {}
    exec(python_block("### Quantizing a model"), namespace)
    exec(python_block("### Saving a quantized model"), namespace)
    assert namespace["qmodel"].recipe.rules[0].quantizer is None  # the head stays float
    loaded, x = namespace["loaded"], namespace["x"]
    np.testing.assert_array_equal(loaded.apply(x), namespace["logits"])
