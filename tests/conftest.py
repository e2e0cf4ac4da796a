import os
import platform
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA:CPU generates code for the machine's widest vector unit, and float sums come out in a
# different order on AVX2 and AVX-512 CPUs. The suite targets AVX2, which every x86-64 server of
# the last decade has, so this machine runs what an AVX2-only one runs (a test that only passed
# on AVX-512 is caught here). `Q4LAB_NATIVE_ISA=1 pytest` runs the native code instead.
flags = os.environ.get("XLA_FLAGS", "")
native = os.environ.get("Q4LAB_NATIVE_ISA") or platform.machine() not in ("x86_64", "AMD64")
if not native and "xla_cpu_max_isa" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_max_isa=AVX2".strip()
os.environ.setdefault("WANDB_MODE", "offline")
# One persistent compilation cache for the run, shared by the two xdist workers (which inherit
# this process's environment) and the processes tests start (a sweep killed and resumed, Ray's
# workers, the notebook's kernel): each compiles what another already compiled. A cached
# executable is the same program, so results do not change; only the compile time goes.
# Every compile is kept (they take well under JAX's default 1 s threshold here). CPU runs only:
# the GPU check runs the tests in one process, where the cache would only add writes.
owned_compile_cache = (
    os.environ["JAX_PLATFORMS"] == "cpu" and "JAX_COMPILATION_CACHE_DIR" not in os.environ
)
if owned_compile_cache:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="q4lab-jax-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# auto dispatches by the rules in tests (tests/ops/test_autotune.py puts tables in use itself)
os.environ.pop("Q4LAB_AUTOTUNE", None)

import pytest  # noqa: E402  (after the environment above: JAX reads it once)
from hypothesis import HealthCheck, settings  # noqa: E402

# JAX compiles on first use of each shape: no per-example deadline, modest example counts.
settings.register_profile(
    "q4lab",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("q4lab")


def pytest_unconfigure(config):
    if owned_compile_cache:  # only the process that made the cache removes it
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def task_cache(tmp_path_factory):
    """One baseline cache for the whole run: each task's float model is trained once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("Q4LAB_CACHE", str(tmp_path_factory.mktemp("q4lab-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def linen():
    """A Linen CNN (`user_models.UserCNN`), its params and an input batch."""
    import jax
    from user_models import UserCNN

    x = jax.random.normal(jax.random.key(0), (3, 6, 6, 4))
    model = UserCNN()
    return model, model.init(jax.random.key(1), x)["params"], x


@pytest.fixture(scope="session")
def nnx_model():
    """An NNX model (`user_models.UserNNX`) and an input batch."""
    import jax
    from flax import nnx
    from user_models import UserNNX

    return UserNNX(nnx.Rngs(0)), jax.random.normal(jax.random.key(2), (3, 10, 4))
