"""What a GPU would compile, seen from any backend: whether a backend is a GPU, a function
lowered for CUDA (Triton and Mosaic kernels included) and the float32 dots in it that a GPU
would round."""

from __future__ import annotations

import re
from collections.abc import Callable

import jax

# a float32 x float32 dot that neither operand asks to compute at HIGHEST, in StableHLO text
_ROUNDED_FLOAT32_DOT = re.compile(
    r"dot_general .*precision = \[(DEFAULT|HIGH), (DEFAULT|HIGH)\]"
    r".*: \(tensor<[^>]*xf32>, tensor<[^>]*xf32>\)"
)


def on_gpu(backend: str | None = None) -> bool:
    """True for a GPU backend (the default backend unless one is named)."""
    return (backend or jax.default_backend()) in ("gpu", "cuda", "rocm")


def lowered_for_gpu(fn: Callable, *args, device_kind: str = "NVIDIA H200") -> jax.stages.Lowered:
    """``jit(fn)`` lowered for CUDA from whatever backend this is (a CPU included), as for a
    ``device_kind`` card: a GPU path's lowering, Triton and Mosaic kernels included, checked
    without a GPU. Triton needs a card to target; with no GPU present, jax >= 0.11 takes it from
    the abstract mesh, and refuses to lower without one."""
    device = jax.sharding.AbstractDevice(device_kind, None, "gpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)
    with jax.sharding.use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


def rounded_dots(text: str) -> list[str]:
    """The lines of lowered StableHLO ``text`` holding a float32 dot at the default (or HIGH)
    precision, which a GPU runs on TF32 tensor cores (operands rounded to 10-bit mantissas;
    relative error ~2.5e-4 measured on an H200) rather than as float32 products. Dots only:
    no op path runs a convolution, and the kernels' own dots are inside their custom calls."""
    return [line.strip() for line in text.splitlines() if _ROUNDED_FLOAT32_DOT.search(line)]
