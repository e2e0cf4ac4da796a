"""wandb logging of sweep points: one wandb run per point; its config is every sweep field of
the point and every text of the row (the recipe, the allocation, the manifest), its summary the
other numbers (metrics, ledger, timings).

Offline by default: no account and no network, the run files go under the experiment's results
directory (``wandb sync`` uploads them later). A project (and entity) makes it online.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from q4lab.sweep.fields import FIELDS


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
