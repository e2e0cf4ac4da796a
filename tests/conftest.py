import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")

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
