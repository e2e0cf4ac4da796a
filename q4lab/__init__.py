"""q4lab: INT4 quantization research in JAX.

The public API is flat: ``q4lab.QuantSpec``, ``q4lab.quantize``, ``q4lab.get_quantizer``, ...
Implementation modules live in the subpackages and may move.
"""

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
from q4lab.quantizers import Quantizer, available, get_quantizer, register

__version__ = "0.1.0"

__all__ = [
    "Ledger",
    "QTensor",
    "QuantSpec",
    "Quantizer",
    "available",
    "dequantize",
    "fake_quant",
    "get_quantizer",
    "quantize",
    "register",
    "size_ledger",
    "stored_bytes",
]
