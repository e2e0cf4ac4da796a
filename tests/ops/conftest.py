"""The ops tests compare each path with a float product: that product must be exact float32.

On a GPU, XLA's default precision for a float32 dot rounds its operands (TF32-like, relative
error ~2.5e-4 measured on an H200), so the references and the float forms under test run at
``precision="highest"`` there; on CPU this changes nothing (float32 dots are exact float32).
"""

import jax
import pytest


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    with jax.default_matmul_precision("highest"):
        yield
