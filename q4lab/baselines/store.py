"""Published float baselines: parameter files shipped with q4lab, checked against an index.

Glossary: a baseline's *key* is the text describing everything its parameters depend on (model,
training config, data provenance); its *digest* is the first 12 hex digits of the key's sha256.

The folder holding this module is the published set: one ``<task>-seed<seed>-<digest>.npz`` per
baseline and ``index.json``, which maps each file name to its key, the sha256 of its bytes, its
float metric and how it was produced (command, CPU instruction set, package versions, date).

Files are ``.npz`` archives (uncompressed, fixed timestamps, so equal parameters give equal
bytes) of the flattened ``params`` dict, one array per leaf, named by its path joined with
``/`` (``Dense_0/kernel``): readable by ``numpy.load`` with no Flax version attached.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from q4lab.files import atomic_write_bytes

PUBLISHED_DIR = Path(__file__).resolve().parent
INDEX = "index.json"
INDEX_FORMAT = 1


class ChecksumError(ValueError):
    """A published baseline file whose bytes do not match the sha256 its index records."""


def published_dir() -> Path | None:
    """Where published baselines are read from: ``$Q4LAB_PUBLISHED`` if set (a folder, or
    ``none`` to never use published baselines), else the folder shipped with q4lab."""
    value = os.environ.get("Q4LAB_PUBLISHED")
    if value is None:
        return PUBLISHED_DIR
    return None if value.strip().lower() in ("", "none", "0", "off") else Path(value)


def digest(key: str) -> str:
    """The 12-hex-digit name of a baseline's key (the part of its file name after the seed)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """``{"Dense_0": {"kernel": a}}`` -> ``{"Dense_0/kernel": a}`` (numpy arrays)."""
    out: dict[str, np.ndarray] = {}
    for name, value in params.items():
        if "/" in name:
            raise ValueError(f"parameter name {prefix + name!r} contains '/'; allowed: no '/'")
        if isinstance(value, Mapping):
            out |= flatten(value, f"{prefix}{name}/")
        else:
            out[prefix + name] = np.asarray(value)
    return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The inverse of `flatten`."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def params_to_bytes(params: Mapping[str, Any]) -> bytes:
    """An ``.npz`` of the flattened params; the same params always give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path, array in sorted(flatten(params).items()):
            info = zipfile.ZipInfo(f"{path}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def params_from_bytes(data: bytes) -> dict[str, Any]:
    """The nested params dict (numpy arrays) of `params_to_bytes`' output."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return unflatten({name: archive[name] for name in archive.files})


def read_index(directory: Path) -> dict[str, dict[str, Any]]:
    """File name -> entry of ``directory/index.json`` (empty if there is none)."""
    path = directory / INDEX
    if not path.exists():
        return {}
    index = json.loads(path.read_text())
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(
            f"{path}: format={index.get('format')!r} is not supported; allowed: {INDEX_FORMAT}"
        )
    return index["baselines"]


def write_index(directory: Path, entries: Mapping[str, dict[str, Any]]) -> None:
    text = json.dumps(
        {"format": INDEX_FORMAT, "baselines": dict(sorted(entries.items()))}, indent=2
    )
    atomic_write_bytes(directory / INDEX, (text + "\n").encode())


def verified_bytes(directory: Path, file_name: str, entry: Mapping[str, Any]) -> bytes:
    """The bytes of a published file, after checking them against the index's sha256."""
    path = directory / file_name
    if not path.exists():
        raise ValueError(
            f"published baseline {path} is listed in {directory / INDEX} but missing; "
            "reinstall q4lab or regenerate it with `python -m q4lab.baselines publish`"
        )
    data = path.read_bytes()
    if sha256(data) != entry["sha256"]:
        raise ChecksumError(
            f"published baseline {path} is corrupt: its sha256 is {sha256(data)}, "
            f"{directory / INDEX} records {entry['sha256']}; reinstall q4lab or regenerate it "
            f"with `python -m q4lab.baselines publish --task {entry['task']} "
            f"--seeds {entry['seed']}`"
        )
    return data


def find_published(
    file_name: str, key: str, directory: Path | None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(params, entry)`` of the published baseline ``file_name`` if ``directory``'s index
    lists it with exactly this ``key``; None if not. A listed file that is missing or whose
    checksum differs raises (`ChecksumError`): a broken install is never silently retrained."""
    if directory is None:
        return None
    entry = read_index(directory).get(file_name)
    if entry is None or entry["key"] != key:
        return None
    return params_from_bytes(verified_bytes(directory, file_name, entry)), entry


def add_published(
    directory: Path, file_name: str, params: Mapping[str, Any], entry: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``params`` as ``directory/file_name`` and its index entry (sha256 and size added)."""
    data = params_to_bytes(params)
    atomic_write_bytes(directory / file_name, data)
    full = {**entry, "sha256": sha256(data), "bytes": len(data)}
    write_index(directory, {**read_index(directory), file_name: full})
    return full
