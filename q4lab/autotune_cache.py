"""Autotuned dispatch kept across processes: one JSON file of choices per device kind.

``Q4LAB_AUTOTUNE=1`` (read when q4lab is imported) puts a `DeviceTable` in use: ``impl="auto"``
then times the paths that can run each new call on this device and runs the fastest of those
that agree with the reference (the rules' pick unless another is more than 10 % faster;
`q4lab.ops.autotune`). The choice is written to ``$Q4LAB_CACHE/autotune/<device>-jax<version>
.json`` (`cache_file`), so the next process (a sweep's other points, a Ray worker, tomorrow's
run) on the same kind of device picks without timing. Unset, empty or ``0``: ``auto`` follows
the rules of `q4lab.ops.choose` (`GPU_CHOICES` on a GPU, blocked on CPU).

The file is plain JSON, one entry per call key (`q4lab.ops.autotune.key`) with the pick, the
rules' pick, the milliseconds of every path timed and the paths rejected (failed, or disagreed
with the reference). Delete it to measure again. Concurrent processes may time the same call
twice (each writes its own entries merged into the file), nothing worse.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import jax

from q4lab.files import atomic_write_bytes
from q4lab.manifest import cores, cpu_name
from q4lab.ops import autotune

ENV = "Q4LAB_AUTOTUNE"
SETTINGS = {
    "0": "off (auto follows q4lab.ops.choose's rules)",
    "1": "on (time the paths of each new call on this device, run the fastest)",
}
FORMAT = 1


def cache_file(device: jax.Device | None = None) -> Path:
    """``$Q4LAB_CACHE/autotune/<device>-jax<version>.json`` (``~/.cache/q4lab`` without
    ``$Q4LAB_CACHE``): paths' speeds differ between kinds of cards (and of CPUs, and their core
    counts) and versions of jax."""
    from q4lab.tasks.base import cache_dir

    device = device or jax.devices()[0]
    kind = f"{device.platform} {device.device_kind}"
    if device.platform == "cpu":
        kind = f"cpu {cpu_name()} {cores()} cores"
    kind = re.sub(r"[^A-Za-z0-9.]+", "-", kind).strip("-")
    return cache_dir() / "autotune" / f"{kind}-jax{jax.__version__}.json"


def _check_entry(key: str, entry: Any) -> None:
    """Raise a ValueError unless ``entry`` is what `q4lab.ops.autotune.measure` writes: the
    ``impl`` chosen, and ``ms``, milliseconds by implementation name."""
    times = entry.get("ms") if isinstance(entry, dict) else None
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("impl"), str)
        and isinstance(times, dict)
        and all(isinstance(t, int | float) and not isinstance(t, bool) for t in times.values())
    ):
        raise ValueError(f"entry {key!r} is not an impl and its times in ms ({entry!r:.200})")


class DeviceTable(MutableMapping[str, dict[str, Any]]):
    """Measured choices for one device kind, read from and written through to a JSON file. The
    file is read on first use (not at import: that would start jax's backend) and rewritten
    atomically on each new entry, merged with what other processes wrote meanwhile. A file that
    cannot be read or written costs a warning and a measurement, never a failed trace: the
    choices then live in memory, and an unreadable file is replaced by the next write."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._entries: dict[str, dict[str, Any]] | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = cache_file()
        return self._path

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
            if not (isinstance(data, dict) and data.get("format") == FORMAT):
                raise ValueError(f"not format {FORMAT} of {__name__}")
            choices = data["choices"]
            for key, entry in choices.items():
                _check_entry(key, entry)
            return choices
        except (FileNotFoundError, NotADirectoryError):  # nothing kept yet
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            warnings.warn(f"{self.path}: {err}; measuring again", RuntimeWarning, stacklevel=3)
            return {}

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.entries[key]

    def __setitem__(self, key: str, entry: dict[str, Any]) -> None:
        self._entries = self._read() | (self._entries or {}) | {key: entry}
        data = {"format": FORMAT, "choices": dict(sorted(self._entries.items()))}
        try:
            atomic_write_bytes(self.path, (json.dumps(data, indent=1) + "\n").encode())
        except OSError as err:
            warnings.warn(
                f"{self.path}: {err}; this process keeps its choices in memory",
                RuntimeWarning,
                stacklevel=3,
            )

    def __delitem__(self, key: str) -> None:
        raise TypeError(f"delete {self.path} to measure again")

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def setting() -> bool:
    """Whether ``$Q4LAB_AUTOTUNE`` asks for autotuning (unset or empty: no); a value other than
    `SETTINGS` raises."""
    value = os.environ.get(ENV, "").strip() or "0"
    if value not in SETTINGS:
        allowed = "; ".join(f"{k}: {v}" for k, v in SETTINGS.items())
        raise ValueError(f"{ENV}={value!r} is not a setting; allowed: {allowed}")
    return value == "1"


def configure() -> None:
    """Put a `DeviceTable` in use for this process when ``$Q4LAB_AUTOTUNE=1``, none when 0."""
    autotune.install(DeviceTable() if setting() else None)
