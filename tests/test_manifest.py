"""The manifest names what a result's roundings depend on, the BLAS kernels included."""

import os
import platform
import subprocess
import sys
from pathlib import Path

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


def _manifest_at(path):
    """q4lab's manifest module loaded from a copy at ``path`` (its own git lookups)."""
    import importlib.util
    import shutil

    shutil.copy(Path(__file__).parents[1] / "q4lab" / "manifest.py", path)
    spec = importlib.util.spec_from_file_location("manifest_copy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(cwd, *args):
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, *args], cwd=cwd, check=True, capture_output=True)


def test_git_commit_is_q4labs_own_and_counts_new_files(tmp_path):
    other = tmp_path / "project"  # another project's repository, q4lab installed inside it
    (other / "venv" / "q4lab").mkdir(parents=True)
    (other / ".gitignore").write_text("venv/\n")
    _git(other, "init", "-q")
    _git(other, "add", ".gitignore")
    _git(other, "commit", "-q", "-m", "x")
    assert _manifest_at(other / "venv" / "q4lab" / "manifest.py").git_commit() == ""
    own = tmp_path / "q4lab-checkout"  # q4lab's own checkout: a new module is a change
    (own / "q4lab").mkdir(parents=True)
    module = _manifest_at(own / "q4lab" / "manifest.py")
    _git(own, "init", "-q")
    _git(own, "add", "q4lab/manifest.py")
    _git(own, "commit", "-q", "-m", "x")
    assert module.git_commit() and not module.git_commit().endswith("-dirty")
    module.git_commit.cache_clear()
    (own / "q4lab" / "new_quantizer.py").write_text("")
    assert module.git_commit().endswith("-dirty")
