"""wandb logging of sweep points: one wandb run per point; its config is every sweep field of
the point and every text of the row (the recipe, the allocation, the manifest), its summary the
other numbers (metrics, ledger, timings).

Offline by default: no account and no network, the run files go under the experiment's results
directory (``wandb sync`` uploads them later). A project (and entity) makes it online.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from q4lab.files import atomic_write_bytes
from q4lab.sweep.fields import FIELDS
from q4lab.sweep.store import python_value

PENDING = ".wandb-pending"  # the hash of a row saved whose wandb run is not yet logged


def _missing(value: Any) -> bool:
    """A cell of a column this row did not have (NaN or None)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclasses.dataclass(frozen=True)
class WandbSettings:
    """``mode``: "offline" (default), "online" or "disabled"."""

    mode: str = "offline"
    project: str | None = None
    entity: str | None = None

    def __post_init__(self) -> None:
        allowed = ("offline", "online", "disabled")
        if self.mode not in allowed:
            raise ValueError(f"wandb mode={self.mode!r} is invalid; allowed: {', '.join(allowed)}")
        if self.mode == "online" and not self.project:
            raise ValueError("wandb mode='online' needs a project (--wandb-project)")


class WandbLogger:
    """Logs each finished row of an experiment as its own wandb run."""

    def __init__(self, settings: WandbSettings, experiment: str, directory: Path):
        self.settings = settings
        self.experiment = experiment
        self.directory = Path(directory)

    @property
    def _pending_file(self) -> Path:
        return self.directory / PENDING

    @contextlib.contextmanager
    def pending(self, config_hash: str) -> Iterator[None]:
        """Around saving a row and logging it: the row's hash is kept in a file until its run
        is logged, so that a sweep interrupted between the two logs it when it resumes
        (`finish_pending`); the table knows it done and would not run it again."""
        if self.settings.mode == "disabled":
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._pending_file, config_hash.encode())
        yield
        self._pending_file.unlink(missing_ok=True)

    def finish_pending(self, read: Callable[[], pd.DataFrame]) -> None:
        """Log the row an interrupted sweep saved but did not log (`pending`), from the table
        ``read()`` gives (read only then)."""
        path = self._pending_file
        if self.settings.mode == "disabled" or not path.exists():
            return
        key = path.read_text().strip()
        table = read()
        if "config_hash" in table:
            for row in table[table["config_hash"] == key].to_dict("records"):
                self.log({k: python_value(v) for k, v in row.items() if not _missing(v)})
        path.unlink(missing_ok=True)

    def log(self, row: dict[str, Any]) -> None:
        if self.settings.mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        config = {
            k: v
            for k, v in row.items()
            if k in FIELDS or not isinstance(v, int | float) or isinstance(v, bool)
        }
        summary = {k: v for k, v in row.items() if k not in config}
        run = wandb.init(
            project=self.settings.project or f"q4lab-{self.experiment}",
            entity=self.settings.entity,
            mode=self.settings.mode,
            dir=str(self.directory),
            name=f"{row.get('recipe', self.experiment)} · seed {row.get('seed')} · "
            f"{row['config_hash'][:8]}",
            group=self.experiment,
            config=config,
            reinit="create_new",
        )
        run.summary.update(summary)
        run.finish()
