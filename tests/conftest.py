import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest
from hypothesis import HealthCheck, settings

# JAX compiles on first use of each shape: no per-example deadline, modest example counts.
settings.register_profile(
    "q4lab",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("q4lab")


@pytest.fixture(scope="session")
def task_cache(tmp_path_factory):
    """One baseline cache for the whole run: each task's float model is trained once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("Q4LAB_CACHE", str(tmp_path_factory.mktemp("q4lab-cache")))
    yield
    mp.undo()
