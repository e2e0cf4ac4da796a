"""benchmarks/compare_commits.py's table: best of each commit's rounds, their ratio, the flag."""

import importlib.util
from pathlib import Path

import pandas as pd

_PATH = Path(__file__).parents[1] / "benchmarks" / "compare_commits.py"
_SPEC = importlib.util.spec_from_file_location("compare_commits", _PATH)
compare_commits = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(compare_commits)


def test_the_table_compares_each_commits_best_round_and_flags_only_quantized_paths():
    times = {  # (path, commit): ms per round; one slow round at the base, as seen on CI
        ("dense float32", "old"): [10.0, 11.0],
        ("dense float32", "new"): [13.0, 12.0],
        ("W4A16 auto", "old"): [5.0, 30.0],
        ("W4A16 auto", "new"): [6.0, 6.5],
        ("W4A4 auto", "old"): [8.0, 8.0],
        ("W4A4 auto", "new"): [8.4, 8.0],
    }
    cells = pd.DataFrame(
        {"KxN": "64x64", "M": 1, "path": path, "commit": commit, "round": r, "ms": ms}
        for (path, commit), rounds in times.items()
        for r, ms in enumerate(rounds)
    )
    table = compare_commits.summarize(cells, "old", "new").set_index("path")
    assert table.loc["W4A16 auto", "old ms"] == 5.0
    assert table.loc["W4A16 auto", "new / old"] == 6.0 / 5.0
    assert table.loc["W4A16 auto", "spread"] == 6.0  # the base's 30 ms round
    assert table.loc["W4A16 auto", "x dense old"] == 10.0 / 5.0
    assert table.loc["W4A16 auto", "x dense new"] == 12.0 / 6.0
    assert table["slower"].to_dict() == {
        "dense float32": False,  # 1.2x, but the same XLA dot in both: noise
        "W4A16 auto": True,
        "W4A4 auto": False,
    }
