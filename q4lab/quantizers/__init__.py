"""Pluggable weight quantizers, registered by name (``get_quantizer("mse", p=2.4)``)."""

from q4lab.quantizers.awq import AWQ
from q4lab.quantizers.base import (
    ACTIVATIONS,
    CROSS,
    HESSIAN,
    Quantizer,
    RangeQuantizer,
    Stats,
    available,
    check_finite,
    check_quantized,
    get_quantizer,
    minmax_range,
    quantizer_class,
    quantizer_identity,
    range_quantizers,
    register,
)
from q4lab.quantizers.gptq import GPTQ, output_error
from q4lab.quantizers.hqq import HQQ
from q4lab.quantizers.minmax import MinMax
from q4lab.quantizers.mse import MSE, lp_error
from q4lab.quantizers.percentile import Percentile

__all__ = [
    "ACTIVATIONS",
    "CROSS",
    "AWQ",
    "GPTQ",
    "HESSIAN",
    "HQQ",
    "MSE",
    "MinMax",
    "Percentile",
    "Quantizer",
    "RangeQuantizer",
    "Stats",
    "available",
    "check_finite",
    "check_quantized",
    "get_quantizer",
    "lp_error",
    "minmax_range",
    "output_error",
    "quantizer_class",
    "quantizer_identity",
    "range_quantizers",
    "register",
]
