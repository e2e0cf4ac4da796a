"""What a result was produced with: package versions, device, git commit, time."""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import jax

PACKAGES = ("q4lab", "jax", "jaxlib", "flax", "optax", "numpy")


CODE_PATHS = ("q4lab", "experiments", "pyproject.toml")  # what a result's numbers depend on


@functools.cache
def git_commit(path: Path | None = None) -> str:
    """The commit of the checkout holding q4lab, with ``-dirty`` if its code (`CODE_PATHS`; not
    results or docs) differs from it, or "" if none. Read once per process, at the first call,
    so every row of a sweep names the code that process loaded."""
    where = path or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
        if sha.returncode:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--"]
            + [f":(top){p}" for p in CODE_PATHS],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def manifest() -> dict[str, str]:
    """Flat manifest fields for a results row."""
    out = {f"{name}_version": _version(name) for name in PACKAGES}
    device = jax.devices()[0]
    out |= {
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": f"{device.platform}:{device.device_kind}",
        "git_commit": git_commit(),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return out


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""
