"""The manifest names what a result's roundings depend on, the BLAS kernels included."""

import os
import platform
import subprocess
import sys

import pytest

from q4lab.manifest import blas, manifest


def _openblas() -> str:
    kernels = blas()
    if not kernels.startswith("openblas "):
        pytest.skip(f"SciPy's BLAS here is not OpenBLAS ({kernels or 'unknown'})")
    return kernels


def test_manifest_names_the_blas_kernels_and_threads_jax_linear_algebra_runs_on():
    kernels = _openblas()
    assert manifest()["blas"] == kernels
    _, version, rest = kernels.split(" ", 2)
    core, threads = rest.split(", ")
    assert version[0].isdigit() and core and threads.split()[0].isdigit(), kernels


@pytest.mark.skipif(platform.machine() != "x86_64", reason="OpenBLAS' x86-64 kernel names")
def test_openblas_coretype_and_threads_are_what_the_manifest_names():
    """What README tells a researcher to set to rerun a table with its kernels and threads
    (Sandybridge's kernels need AVX, which every CPU the suite runs on has)."""
    _openblas()
    env = os.environ | {"OPENBLAS_CORETYPE": "Sandybridge", "OPENBLAS_NUM_THREADS": "1"}
    code = "from q4lab.manifest import blas; print(blas())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(" Sandybridge, 1 thread"), out.stdout


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_manifest_names_the_cores_xla_and_openblas_run_on():
    """Pinned to one core (as `taskset -c 0` does), the manifest says so: README tells a
    researcher to rerun the tables on as many cores as they were made on."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from q4lab.manifest import manifest; print(manifest()['cpu'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(", 1 core"), out.stdout
