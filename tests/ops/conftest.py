"""The ops tests compare each path with a float product: that product must be exact float32.

On a GPU, XLA's default precision for a float32 dot rounds its operands (TF32-like, relative
error ~2.5e-4 measured on an H200), so the references and the float forms under test run at
``precision="highest"`` there; on CPU this changes nothing (float32 dots are exact float32).
"""

import jax
import pytest

from q4lab.ops import lowered_for_gpu


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture
def lowered_for_cuda():
    """``lower(fn, *args)``: the text of ``jit(fn)`` lowered for CUDA from this machine, for an
    H200 (`q4lab.ops.lowered_for_gpu`)."""
    return lambda fn, *args: lowered_for_gpu(fn, *args).as_text()


@pytest.fixture
def mosaic_kernel_ir(lowered_for_cuda, monkeypatch):
    """``ir(fn, *args)``: the MLIR of the Mosaic GPU kernels in ``jit(fn)`` lowered for CUDA, as
    Mosaic GPU emits it (register-level ops and inline PTX); the lowered program carries it only
    as bytecode, so it is taken as Mosaic GPU serializes it."""
    from jax.experimental.mosaic.gpu import core

    modules = []
    serialize = core._run_serde_pass

    def keep(module, **kwargs):
        modules.append(module.operation.get_asm(enable_debug_info=False))
        return serialize(module, **kwargs)

    monkeypatch.setattr(core, "_run_serde_pass", keep)

    def ir(fn, *args) -> str:
        modules.clear()
        lowered_for_cuda(fn, *args)
        assert modules, "no Mosaic GPU kernel was lowered"
        return "\n".join(modules)

    return ir
