"""The manifest names what a result's roundings depend on, the BLAS kernels included."""

import os
import platform
import subprocess
import sys

import pytest

from q4lab.manifest import blas, manifest


def test_manifest_names_the_blas_kernels_jax_linear_algebra_runs_on():
    here = manifest()
    assert here["blas"] == blas()
    name, version, kernels = here["blas"].split(" ", 2)
    assert name == "openblas" and version[0].isdigit() and kernels, here["blas"]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="OpenBLAS' x86-64 kernel names")
def test_openblas_coretype_picks_the_kernels_the_manifest_names():
    """What `q4lab reproduce`'s docstring tells a researcher to set to rerun a table with its
    kernels (Sandybridge's need AVX, which every CPU the suite runs on has)."""
    env = os.environ | {"OPENBLAS_CORETYPE": "Sandybridge"}
    code = "from q4lab.manifest import blas; print(blas())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "Sandybridge", out.stdout
