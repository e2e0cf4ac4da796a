"""benchmarks/compare_commits.py's table: best of each commit's rounds, their ratio, the flag."""

import importlib.util
from pathlib import Path

import pandas as pd

_PATH = Path(__file__).parents[1] / "benchmarks" / "compare_commits.py"
_SPEC = importlib.util.spec_from_file_location("compare_commits", _PATH)
compare_commits = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare_commits)


def test_the_table_compares_each_commits_best_round_per_cell_and_flags_only_quantized_paths():
    shapes, batches = ("8192x8192", "4096x4096"), (128, 1)  # in the order the child ran them
    rounds = {  # (path, commit): ms per round at 8192x8192, M=128; one slow round at the base
        ("dense float32", "old"): [10.0, 11.0],
        ("dense float32", "new"): [13.0, 12.0],
        ("W4A16 auto", "old"): [5.0, 30.0],
        ("W4A16 auto", "new"): [6.0, 6.5],
        ("W4A4 auto", "old"): [8.0, 8.0],
        ("W4A4 auto", "new"): [8.4, 8.0],
    }
    scale = {shape: 1 + i for i, shape in enumerate(shapes)} | {
        m: 1 + 10 * i for i, m in enumerate(batches)
    }
    cells = pd.DataFrame(
        {
            "KxN": shape,
            "M": m,
            "path": path,
            "commit": commit,
            "round": r,
            "ms": ms * scale[shape] * scale[m],
        }
        for shape in shapes
        for m in batches
        for (path, commit), times in rounds.items()
        for r, ms in enumerate(times)
    )
    table = compare_commits.summarize(cells, "old", "new")
    assert list(zip(table["KxN"], table["M"], strict=True)) == [
        (s, m) for s in shapes for m in sorted(batches) for _ in range(3)
    ]
    for (shape, m), cell in table.groupby(["KxN", "M"]):
        cell = cell.set_index("path")
        factor = scale[shape] * scale[m]  # every time of the cell, so every ratio is the same
        assert cell.loc["W4A16 auto", "old ms"] == 5.0 * factor
        assert cell.loc["W4A16 auto", "new / old"] == 6.0 / 5.0
        assert cell.loc["W4A16 auto", "spread"] == 6.0  # the base's 30 ms round
        assert cell.loc["W4A16 auto", "x dense old"] == 10.0 / 5.0  # the cell's own dense
        assert cell.loc["W4A16 auto", "x dense new"] == 12.0 / 6.0
        assert cell["slower"].to_dict() == {
            "dense float32": False,  # 1.2x, but the same XLA dot in both: noise
            "W4A16 auto": True,
            "W4A4 auto": False,
        }
