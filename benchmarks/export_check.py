"""Save -> load round trip of real tasks (issue 16's check): identical outputs, file size within
1 % + 64 KiB of the ledger.

Each task's float baseline (seed 0) is quantized W4A4 (GPTQ act-order, g128, dynamic per-row
4-bit activations), saved with `QuantizedModel.save` (recording the task), loaded back with
``q4lab.load(dir)`` (no float weights, no model argument) and run on the task's check batch.

    python benchmarks/export_check.py                    # charlm and minilm
    python benchmarks/export_check.py charlm --keep out/ # keep the saved directories
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import q4lab
from q4lab.export import weights_path
from q4lab.tasks import get_task

RECIPE = q4lab.Recipe.single(
    quantizer="gptq",
    options={"act_order": True},
    weight=q4lab.QuantSpec(group_size=128),
    act=q4lab.ActSpec(),
    sequential=False,
)


def check(name: str, directory: Path, seed: int = 0) -> dict[str, object]:
    """Quantize, save, load and compare one task; one row of the table."""
    task = get_task(name)
    start = time.perf_counter()
    qmodel = q4lab.quantize_model(
        task.model,
        task.baseline(seed),
        RECIPE,
        sample_input=task.sample_input(seed),
        calibration=task.calibration(seed),
    )
    quantize_s = time.perf_counter() - start
    start = time.perf_counter()
    qmodel.save(directory, task=name, overwrite=True)  # --keep: a rerun replaces its own
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    loaded = q4lab.load(directory)
    load_s = time.perf_counter() - start
    x = task.check_input(seed)
    same = bool(np.array_equal(np.asarray(qmodel.apply(x)), np.asarray(loaded.apply(x))))
    ledger = qmodel.ledger().total_bytes
    file_bytes = weights_path(directory).stat().st_size
    return {
        "task": name,
        "layers": len(qmodel.layers),
        "outputs identical": same,
        "ledger bytes": ledger,
        "file bytes": file_bytes,
        "over ledger": file_bytes - ledger,
        "within 1 % + 64 KiB": file_bytes <= 1.01 * ledger + 64 * 1024,
        "quantize s": round(quantize_s, 1),
        "save s": round(save_s, 2),
        "load s": round(load_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", default=["charlm", "minilm"])
    parser.add_argument("--keep", type=Path, help="save under this directory (else a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        rows = [check(name, root / name) for name in args.tasks]
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    print(" | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths, strict=True)))
    if not all(r["outputs identical"] and r["within 1 % + 64 KiB"] for r in rows):
        raise SystemExit("export check failed")


if __name__ == "__main__":
    main()
