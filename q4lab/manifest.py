"""What a result was produced with: package versions, CPU (its cores included) and BLAS kernels,
device, how ``impl="auto"`` dispatched, git commit, time."""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import jax

from q4lab.ops import autotune

PACKAGES = ("q4lab", "jax", "jaxlib", "flax", "optax", "numpy")


CODE_PATHS = ("q4lab", "experiments", "pyproject.toml")  # what a result's numbers depend on


@functools.cache
def git_commit(path: Path | None = None) -> str:
    """The commit of the checkout holding q4lab, with ``-dirty`` if its code (`CODE_PATHS`; not
    results or docs) differs from it, new files included, or "" if none: also when q4lab is
    installed inside another project's repository, which does not track it. Read once per
    process, at the first call, so every row of a sweep names the code that process loaded."""
    where = path or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if sha.returncode:
            return ""
        if path is None:  # the repository around q4lab must be q4lab's own
            tracked = subprocess.run(
                ["git", "ls-files", "--error-unmatch", "--", Path(__file__).name],
                cwd=where,
                capture_output=True,
                timeout=5,
            )
            if tracked.returncode:
                return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=normal", "--"]
            + [f":(top){p}" for p in CODE_PATHS],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


_SIMD_PREFIXES = ("avx", "amx", "fma", "sse4", "f16c")


def cpu_flags() -> list[str]:
    """The CPU's SIMD feature flags that XLA:CPU may generate code for (Linux; else empty)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(_SIMD_PREFIXES))
    return []


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa(flags: Sequence[str] | None = None) -> str:
    """The widest vector instruction set of this CPU, e.g. ``x86_64 AVX-512 (+AMX)``, and the
    cap ``XLA_FLAGS=--xla_cpu_max_isa=...`` puts on XLA's code if set."""
    flags = cpu_flags() if flags is None else flags
    machine = platform.machine()
    cap = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_cpu_max_isa" in f]
    if cap:
        machine = f"XLA capped at {cap[-1].split('=')[-1]} on {machine}"
    if "avx512f" in flags:
        isa = "AVX-512" + (" (+AMX)" if "amx_tile" in flags else "")
    elif "avx2" in flags:
        isa = "AVX2"
    elif "avx" in flags:
        isa = "AVX"
    else:
        return machine
    return f"{machine} {isa}"


def cores() -> int:
    """The CPUs this process may run on. XLA:CPU runs one thread per core, and OpenBLAS does by
    default; a large dot rounds differently on 1 and 2 cores (a 2048x128 ``X^T X``:
    benchmarks/NOTES.md), so the count changes float results, GPTQ's Hessians above all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def blas() -> str:
    """The BLAS behind jax's CPU linear algebra: its kernels for this CPU and its threads, e.g.
    ``openblas 0.3.30 SkylakeX, 2 threads``; "" if unknown. jaxlib calls SciPy's LAPACK, whose
    OpenBLAS picks its kernels per CPU model (``OPENBLAS_CORETYPE`` names them) and splits work
    over its threads (``OPENBLAS_NUM_THREADS``; by default one per core); both change how it
    rounds, so GPTQ's Cholesky factors, codes and scores follow them (README, `q4lab
    reproduce`)."""
    try:
        import scipy
        import scipy.linalg  # loads SciPy's BLAS, as jax's first LAPACK call does
        from threadpoolctl import threadpool_info
    except ImportError:
        return ""
    libraries = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    scipy_dir = Path(scipy.__file__).resolve().parent
    # SciPy's wheels bundle it beside the package (scipy.libs) or inside it (scipy/.dylibs)
    bundled = [scipy_dir, scipy_dir.parent / "scipy.libs"]
    ours = [lib for lib in libraries if _under(lib.get("filepath"), bundled)]
    numpy_dir = Path(importlib.util.find_spec("numpy").origin).resolve().parent
    not_numpys = [
        lib
        for lib in libraries
        if not _under(lib.get("filepath"), [numpy_dir, numpy_dir.parent / "numpy.libs"])
    ]
    library = next(iter(ours or not_numpys), None)  # else: a BLAS loaded besides NumPy's own
    if library is None:
        return ""
    parts = (library.get(key) for key in ("internal_api", "version", "architecture"))
    threads = library.get("num_threads")
    count = f", {threads} thread{'s' * (threads != 1)}" if threads else ""
    return " ".join(str(part) for part in parts if part) + count


def _under(path: str | None, folders: Sequence[Path]) -> bool:
    resolved = Path(path or "/").resolve()
    return any(resolved.is_relative_to(folder) for folder in folders)


def manifest() -> dict[str, str]:
    """Flat manifest fields for a results row."""
    out = {f"{name}_version": _version(name) for name in PACKAGES}
    device = jax.devices()[0]
    count = cores()
    out |= {
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "cpu": f"{cpu_name()}, {cpu_isa()}, {count} core{'s' * (count != 1)}",  # orders sums
        "blas": blas(),  # and LAPACK's per BLAS kernel
        "device": f"{device.platform}:{device.device_kind}",
        "dispatch": "autotuned" if autotune.current() is not None else "rules",  # impl="auto"
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return out


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""
