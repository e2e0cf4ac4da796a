"""Autotuned dispatch kept across processes: one JSON file of choices per device kind.

``Q4LAB_AUTOTUNE=1`` (read when q4lab is imported) puts a `DeviceTable` in use: ``impl="auto"``
then times the paths that can run each new call on this device and runs the fastest that agrees
with the reference (`q4lab.ops.autotune`), and the choice is written to
``$Q4LAB_CACHE/autotune/<device kind>-jax<version>.json``, so the next process (a sweep's other
points, a Ray worker, tomorrow's run) on the same kind of device picks without timing. Unset or
``0``: ``auto`` follows the rules of `q4lab.ops.choose` (`GPU_CHOICES` on a GPU).

The file is plain JSON, one entry per call key (`q4lab.ops.autotune.key`) with the pick, the
milliseconds of every path timed and the paths rejected (failed, or disagreed with the
reference). Delete it to measure again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import jax

from q4lab.baselines.store import atomic_write_bytes
from q4lab.ops import autotune

ENV = "Q4LAB_AUTOTUNE"
SETTINGS = {
    "0": "off (auto follows q4lab.ops.choose's rules)",
    "1": "on (time paths, keep the fastest)",
}
FORMAT = 1


def cache_file(device: jax.Device | None = None) -> Path:
    """``$Q4LAB_CACHE/autotune/<device kind>-jax<version>.json`` (``~/.cache/q4lab`` without
    ``$Q4LAB_CACHE``): kernels' speeds differ between kinds of cards and versions of jax."""
    from q4lab.tasks.base import cache_dir

    device = device or jax.devices()[0]
    kind = re.sub(r"[^A-Za-z0-9.]+", "-", f"{device.platform} {device.device_kind}").strip("-")
    return cache_dir() / "autotune" / f"{kind}-jax{jax.__version__}.json"


class DeviceTable(MutableMapping[str, dict[str, Any]]):
    """Measured choices for one device kind, read from and written through to a JSON file. The
    file is read on first use (not at import: that would start jax's backend) and rewritten
    atomically on each new entry, merged with what other processes wrote meanwhile."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._entries: dict[str, dict[str, Any]] | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = cache_file()
        return self._path

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        data = json.loads(self.path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(
                f"{self.path}: format {data.get('format')!r}, expected {FORMAT}; "
                "delete the file to measure again"
            )
        return data["choices"]

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.entries[key]

    def __setitem__(self, key: str, entry: dict[str, Any]) -> None:
        self._entries = self._read() | self.entries | {key: entry}
        data = {"format": FORMAT, "choices": dict(sorted(self._entries.items()))}
        atomic_write_bytes(self.path, (json.dumps(data, indent=1) + "\n").encode())

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"delete {self.path} to measure again")

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def setting() -> bool:
    """Whether ``$Q4LAB_AUTOTUNE`` asks for autotuning; a value other than `SETTINGS` raises."""
    value = os.environ.get(ENV, "0").strip()
    if value not in SETTINGS:
        allowed = "; ".join(f"{k}: {v}" for k, v in SETTINGS.items())
        raise ValueError(f"{ENV}={value!r} is not a setting; allowed: {allowed}")
    return value == "1"


def configure() -> None:
    """Put a `DeviceTable` in use for this process when ``$Q4LAB_AUTOTUNE=1``."""
    if setting():
        autotune.install(DeviceTable())
