"""The compute on quantized operands (int codes in, float out)."""

from q4lab.ops.lowering import lowered_for_gpu, rounded_dots
from q4lab.ops.matmul import (
    GPU_CHOICES,
    IMPLEMENTATIONS,
    candidate_name,
    candidates,
    centered_weight_codes,
    choose,
    int_matmul,
    on_gpu,
    tuning_paths,
    w4a16_matmul,
)

__all__ = [
    "GPU_CHOICES",
    "IMPLEMENTATIONS",
    "candidate_name",
    "candidates",
    "centered_weight_codes",
    "choose",
    "int_matmul",
    "lowered_for_gpu",
    "on_gpu",
    "rounded_dots",
    "tuning_paths",
    "w4a16_matmul",
]
