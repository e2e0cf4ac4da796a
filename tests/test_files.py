"""Files q4lab writes through a private temporary (results tables, baselines, saved models)
end with the mode a plain open() gives: readable by colleagues where the umask allows it."""

import os
import stat

import pytest

from q4lab.files import atomic_write_bytes
from q4lab.sweep import ResultsStore


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_take_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = ResultsStore(tmp_path / "results")
        store.append({"config_hash": "a"}, [{"layer": "Dense_0", "bits": 4}])
        atomic_write_bytes(tmp_path / "baseline.npz", b"bytes")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    expected = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expected == 0o666 & ~umask
    for path in (store.path, store.directory / "layers.parquet", tmp_path / "baseline.npz"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name
    assert store.read()["config_hash"].tolist() == ["a"]
