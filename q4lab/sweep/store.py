"""The results table of an experiment: ``results/<experiment>/runs.parquet``, one row per point,
and its side table ``layers.parquet``, one row per (point, quantizable layer).

Every append rewrites the table to a temporary file in the same directory and renames it over
the old one (`os.replace`), so a crash at any moment leaves the previous complete table: no
finished row is ever lost and no half-written file is ever read.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from q4lab.files import share_as_opened

RUNS = "runs.parquet"
LAYERS = "layers.parquet"
LOCK = ".lock"  # held by the one process writing the tables (`ResultsStore.writer`)


def _with_field_defaults(table: pd.DataFrame) -> pd.DataFrame:
    from q4lab.sweep.fields import FIELDS, LATE_FIELDS, QAT_FIELDS

    for name in (*LATE_FIELDS, *QAT_FIELDS):
        if name in table and table[name].isna().any():
            default = FIELDS[name][0]
            stored = json.dumps(default) if isinstance(default, dict | list) else default
            table[name] = table[name].fillna(stored)
    if "training" in table:  # a record column: rows from before training existed were PTQ
        table["training"] = table["training"].fillna("ptq")
    if "allocation" in table:  # likewise rows from before mixed precision: uniform or rules
        table["allocation"] = table["allocation"].fillna("uniform")
    return table


def python_value(value: Any) -> Any:
    """A cell read from a table as the Python value the row held (numpy scalars: ``json``,
    hashing and wandb need them)."""
    return value.item() if isinstance(value, np.generic) else value


class ResultsStore:
    """Rows of one experiment, keyed by ``config_hash``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / RUNS

    def read(self) -> pd.DataFrame:
        """The table as it is now. The file is read in one go and parsed from memory: a reader
        that opened the path twice could mix an old footer with a newer file. Rows written
        before a sweep field existed get its default (they ran with it)."""
        if not self.path.exists():
            return pd.DataFrame()
        try:
            table = pd.read_parquet(io.BytesIO(self.path.read_bytes()))
        except Exception as err:  # pyarrow's error names a buffer, not the file
            raise ValueError(f"{self.path} is not a readable parquet table: {err}") from err
        return _with_field_defaults(table)

    def done(self) -> set[str]:
        """Config hashes already in the table."""
        table = self.read()
        return set(table["config_hash"]) if "config_hash" in table else set()

    def discard_partial_writes(self) -> None:
        """Remove temporary files a killed writer left behind (call under `writer`: then no
        other writer is at work)."""
        for tmp in self.directory.glob(".runs-*.parquet"):
            tmp.unlink(missing_ok=True)

    def layers(self) -> pd.DataFrame:
        """The per-layer side table (``config_hash``, ``layer``, the rule it got, its bytes)."""
        path = self.directory / LAYERS
        if not path.exists():
            return pd.DataFrame()
        try:
            return pd.read_parquet(io.BytesIO(path.read_bytes()))
        except Exception as err:  # pyarrow's error names a buffer, not the file
            raise ValueError(f"{path} is not a readable parquet table: {err}") from err

    def check_writable(self) -> None:
        """Raise a ValueError naming the directory and the reason unless a table can be written
        there (and its tables read): before any point runs, not after the first."""
        self.read()
        self.layers()
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".runs-", suffix=".parquet")
            os.close(fd)
            os.remove(tmp)
        except OSError as err:
            raise ValueError(f"{self.directory} cannot hold the results: {err.strerror}") from err

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """Hold the directory's lock while writing: a second ``q4lab run`` into it is refused
        (two writers would each rewrite the table from what they read, and lose rows). The lock
        goes with the process, however it ends."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise ValueError(
                    f"{self.directory} is being written by another q4lab run ({holder}); allowed: "
                    "one run per results directory at a time (or another --results)"
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()}")
            lock.flush()
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, row: dict, layers: list[dict] | None = None) -> None:
        """Add one row, atomically; its ``layers`` first (a crash between the two leaves layer
        rows without a run row, replaced when the point reruns)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if layers:
            key = row["config_hash"]
            old = self.layers()
            if "config_hash" in old:
                old = old[old["config_hash"] != key]
            new = pd.DataFrame([{"config_hash": key, **layer} for layer in layers])
            self._write(pd.concat([old, new], ignore_index=True), LAYERS)
        self._write(pd.concat([self.read(), pd.DataFrame([row])], ignore_index=True), RUNS)

    def _write(self, table: pd.DataFrame, name: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".runs-", suffix=".parquet")
        os.close(fd)
        try:
            table.to_parquet(tmp, index=False)
            share_as_opened(tmp)
            os.replace(tmp, self.directory / name)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
