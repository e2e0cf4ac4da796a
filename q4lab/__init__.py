"""q4lab: INT4 quantization research in JAX.

The public API is flat: recipes (``q4lab.Recipe``, ``q4lab.Rule``, ``q4lab.ActSpec``,
``q4lab.TransformSpec``), ``q4lab.quantize_model`` for any Flax model, ``q4lab.evaluate`` for a
registered task, and the numbers underneath (``q4lab.QuantSpec``, ``q4lab.quantize``,
``q4lab.get_quantizer``, ...). Implementation modules live in the subpackages and may move.
"""

from q4lab import autotune_cache as _autotune_cache
from q4lab.core import (
    Ledger,
    QTensor,
    QuantSpec,
    dequantize,
    fake_quant,
    quantize,
    size_ledger,
    stored_bytes,
)
from q4lab.evaluate import evaluate
from q4lab.export import load
from q4lab.quantize_model import quantize_model
from q4lab.quantized_model import QuantizedModel
from q4lab.quantizers import Quantizer, available, get_quantizer, register
from q4lab.recipe import ActSpec, Recipe, Rule, TransformSpec

__version__ = "0.1.0"

_autotune_cache.configure()  # Q4LAB_AUTOTUNE=1: impl="auto" times the paths on this device

__all__ = [
    "ActSpec",
    "Ledger",
    "QTensor",
    "QuantSpec",
    "QuantizedModel",
    "Quantizer",
    "Recipe",
    "Rule",
    "TransformSpec",
    "available",
    "dequantize",
    "evaluate",
    "fake_quant",
    "get_quantizer",
    "load",
    "quantize",
    "quantize_model",
    "register",
    "size_ledger",
    "stored_bytes",
]
