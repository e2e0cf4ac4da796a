"""The prepared GPU check (benchmarks/gpu_check.sh, bench_ops.py) as far as a CPU can run it: what
a device call brings back, and which paths the benchmark times on a GPU."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from q4lab.core import QuantSpec
from q4lab.ops import matmul
from q4lab.quantizers import get_quantizer

ROOT = Path(__file__).parents[1]
BACK_FROM_OUT = 8  # files the device tool returns from $OUT (/work/.library/device/README.md)

# stand-ins that only write what a real run would (the benchmarks' --out files)
STAND_INS = {
    "python3": 'for a; do [ "$prev" = --out ] && echo table >"$a"; prev=$a; done',
    "nvidia-smi": "echo 'NVIDIA H200, 143771 MiB, 580.159.04'",
    "timeout": 'shift; exec "$@"',
}


@pytest.fixture
def stand_ins(tmp_path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in STAND_INS.items():
        (folder / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def _call(stand_ins: Path, out: Path, *steps: str) -> set[str]:
    """Run the script as the device tool would; the names in the archive it brings back."""
    env = {**os.environ, "PATH": f"{stand_ins}:{os.environ['PATH']}", "OUT": str(out)}
    subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", *steps],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    back = sorted(p.name for p in out.iterdir())
    assert back == ["gpu_check.tar.gz"] and len(back) <= BACK_FROM_OUT
    with tarfile.open(out / "gpu_check.tar.gz") as archive:
        return {Path(name).name for name in archive.getnames() if name != "."}


def test_a_device_call_brings_back_its_own_steps_logs(stand_ins, tmp_path):
    first = ["preflight", "mosaic-tests", "int4-bytes", "mosaic", "mosaic.md", "w4a4", "w4a4.md"]
    first += ["tiling", "tiling.md", "smoke", "check", "check.md"]
    second = ["tests", "autotune-tests", "dispatch", "dispatch.md"]  # a second call, after it
    for out, expected, steps in [("out1", first, []), ("out2", second, ["tests", "dispatch"])]:
        logs = {name if name.endswith(".md") else f"{name}.log" for name in expected}
        assert _call(stand_ins, tmp_path / out, *steps) == logs | {"gpu.txt"}


@pytest.fixture
def bench_ops_on_a_gpu(monkeypatch):
    """benchmarks/bench_ops.py as it builds its paths on a GPU."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_ops

    monkeypatch.setattr(bench_ops, "on_gpu", lambda: True)
    monkeypatch.setattr(
        bench_ops, "choose", lambda qt, m, **kw: matmul.choose(qt, m, backend="gpu", **kw)
    )
    yield bench_ops
    sys.modules.pop("bench_ops", None)


@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("group_size", [128, None])  # None: per-channel
def test_the_benchmark_times_the_w4a4_kernel_wherever_it_runs(bench_ops_on_a_gpu, m, group_size):
    """W4A16 auto's pick (the kernel at small M) must not keep W4A4's kernel from the table,
    or the check cannot show auto slower than it."""
    w = jax.random.normal(jax.random.key(0), (256, 512)) / 16
    spec = QuantSpec(group_size=group_size, scale_dtype="float16")
    qt = get_quantizer("minmax").quantize(w, spec)
    assert matmul.pallas_gpu.unsupported(qt, m, w4a4=True) is None
    names = list(bench_ops_on_a_gpu._paths(qt, m, False, jnp.bfloat16))
    assert any(n.startswith("W4A4") and "pallas" in n for n in names), names
    assert "W4A4 blocked" not in names  # the CPU path, not timed on a GPU
