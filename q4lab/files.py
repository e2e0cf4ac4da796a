"""Files written whole or not at all, with the permissions a plain ``open()`` would give.

A file is written to a temporary name in its directory and renamed over the target
(`os.replace`), so a crash at any moment leaves the previous complete file. Temporary files
(`tempfile.mkstemp`, and safetensors' writer) are private (``0o600``); `share_as_opened` gives the
renamed file ``0o666`` less the umask, so a results directory or a saved model is as readable by
colleagues as any file the user writes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def share_as_opened(path: str | os.PathLike) -> None:
    """Give ``path`` the mode ``open(path, "w")`` would have created it with."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the file
        share_as_opened(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
