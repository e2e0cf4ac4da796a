"""Plots and reports on tiny synthetic results tables: configurations are never merged, points
sharing an x are dodged while the ticks stay at the true x, labels read as a paper's, the Pareto
front needs two points, and the report gives the best point per bit budget with deltas inside
the seeds' spread flagged."""

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")

from q4lab.cli import main
from q4lab.plots import (
    activation_label,
    dodge,
    higher_is_better,
    pareto_front,
    pareto_plot,
    plot_points,
    quantizer_label,
    value_label,
    x_ticks,
)
from q4lab.report import (
    NOISE,
    best_points,
    budget_table,
    paired_difference,
    report,
    within_noise,
)

OVERHEAD = {0: 0.125, 32: 0.5, 16: 1.0}  # bits of scales per weight, per group size


def make_table(scores, fp=(0.97, 0.98), metric="accuracy", higher=True) -> pd.DataFrame:
    """One row per (configuration, seed); ``scores[(quantizer, bits, group_size, act_bits)]``
    lists the metric per seed; stored sizes are synthetic (2..4-bit codes at one size)."""
    rows = []
    for (quantizer, bits, group, act), values in scores.items():
        for seed, value in enumerate(values):
            rows.append(
                {
                    "experiment": "tiny",
                    "task": "toy",
                    "seed": seed,
                    "quantizer": quantizer,
                    "bits": bits,
                    "group_size": group,
                    "act_bits": act,
                    "act_mode": "none" if act == 16 else "dynamic",
                    "metric": metric,
                    "higher_is_better": higher,
                    "score": value,
                    "fp_score": fp[seed],
                    "bits_per_weight": max(bits, 4) + OVERHEAD[group],
                    "ideal_bits_per_weight": bits + OVERHEAD[group],
                }
            )
    return pd.DataFrame(rows)


def grid(quantizers, bits, groups, acts, value=lambda *k: [0.95, 0.96]):
    return {k: value(*k) for k in itertools.product(quantizers, bits, groups, acts)}


def test_dodge_spreads_shared_x_around_it_and_leaves_isolated_points():
    x = np.array([1.0, 1.0, 1.0, 2.0, 5.0, 5.0])
    p = dodge(x, 0.1)
    np.testing.assert_allclose(p[:3], [0.9, 1.0, 1.1])
    np.testing.assert_allclose(p[4:], [4.95, 5.05])
    assert p[3] == 2.0  # alone: not moved
    assert np.all(np.diff(p) >= 0.1 - 1e-12)  # order kept, never closer than a step
    q = dodge([1.0, 1.05], 0.1)  # near neighbours are pushed apart symmetrically
    np.testing.assert_allclose(q, [0.975, 1.075])
    with pytest.raises(ValueError, match="sorted"):
        dodge([2.0, 1.0], 0.1)


def test_points_sharing_an_x_are_dodged_and_the_ticks_stay_at_the_true_x():
    table = make_table(grid(["minmax", "gptq"], [3, 4], [0, 32], [16]))
    points = plot_points(table)
    assert len(points) == 8  # 2 quantizers x 2 widths x 2 group sizes
    for x, part in points.groupby("bits_per_weight"):
        assert part["x_plot"].is_unique  # every series at this x gets its own offset
        offsets = part["x_plot"] - x
        assert offsets.abs().max() < 0.2 * (4.5 - 4.125)  # small: the axis stays honest
        assert abs(offsets.mean()) < 1e-9  # centred on the true x
    ticks, labels = x_ticks(points, "bits_per_weight")
    assert ticks == [4.125, 4.5]
    assert labels == ["4.125\nW3/4 per-channel", "4.5\nW3/4 g32"]


def test_configurations_of_different_bits_or_act_bits_are_never_merged():
    # W3 and W4 have the same stored size; A4 and A16 the same weights
    table = make_table(grid(["minmax"], [3, 4], [0], [4, 16]))
    points = plot_points(table)
    assert len(points) == 4
    assert set(points["col"]) == {4, 16}  # a panel per activation width
    for _, panel in points.groupby("col"):
        assert panel["series"].nunique() == 2  # W3 and W4 are separate series (markers)
    fig = pareto_plot(table)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["weights only (float activations)", "A4 activations (dynamic)"]


def test_a_field_on_the_x_axis_still_tells_configurations_apart():
    table = make_table(grid(["minmax", "gptq"], [3, 4], [0, 32], [16]))
    points = plot_points(table, x="bits")
    assert len(points) == 8 and sorted(points["bits"].unique()) == [3, 4]  # never one at 3.5
    assert points.attrs["style"] is None  # the axis shows the bits already
    for _, series in points.groupby("series"):  # a line per quantizer and group size
        assert sorted(series["bits"]) == [3, 4]
    assert budget_table(table, x="bits")["bits"].tolist() == [3]  # equal scores: the smaller
    assert "| budget (bits) " in report(table, x="bits")
    table["compression"] = 32 / table["bits_per_weight"]
    with pytest.raises(ValueError, match=r"'compression' is not a size .* grows as the model"):
        budget_table(table, x="compression")


def test_a_misspelled_column_is_named_with_its_closest_match():
    with pytest.raises(ValueError, match=r"unknown column 'scor' \(did you mean 'score'\?\)"):
        plot_points(make_table(grid(["minmax"], [4], [0], [16])), y="scor")
    with pytest.raises(ValueError, match=r"--x quantizer holds text \(minmax\).*--hue quantizer"):
        plot_points(make_table(grid(["minmax"], [4], [0], [16])), x="quantizer")  # was a TypeError


def test_the_pareto_front_needs_two_points():
    dominated = grid(["minmax", "gptq"], [4], [0, 32], [16])
    dominated[("gptq", 4, 0, 16)] = [0.99, 0.99]  # best and smallest: a front of one point
    points = plot_points(make_table(dominated))
    assert not points["front"].any()
    legend = [t.get_text() for t in pareto_plot(make_table(dominated)).legends[0].get_texts()]
    assert "Pareto front" not in legend

    trade_off = dict(dominated)
    trade_off[("minmax", 4, 32, 16)] = [0.995, 0.995]  # bigger and better: a second point
    points = plot_points(make_table(trade_off))
    front = points[points["front"]].sort_values("bits_per_weight")
    assert front["quantizer"].tolist() == ["gptq", "minmax"]
    legend = [t.get_text() for t in pareto_plot(make_table(trade_off)).legends[0].get_texts()]
    assert "Pareto front" in legend


def test_lower_is_better_metrics_take_the_lower_front():
    scores = grid(
        ["minmax"],
        [4],
        [0, 32, 16],
        [16],
        value=lambda q, b, g, a: [5 - {0: 0, 32: 1, 16: 2}[g]] * 2,
    )
    table = make_table(scores, fp=(3.5, 3.5), metric="perplexity", higher=False)
    points = plot_points(table)
    front = points[points["front"]].sort_values("bits_per_weight")
    assert front["group_size"].tolist() == [0, 32, 16]  # each bigger one is lower
    ax = pareto_plot(table).axes[0]
    assert ax.get_ylabel() == "perplexity (lower is better)"


def test_labels_are_the_ones_a_reader_uses():
    assert quantizer_label("gptq") == "GPTQ"
    assert (
        quantizer_label("gptq(act_order=True,clipping='mse')") == "GPTQ (act order, clipping MSE)"
    )
    assert quantizer_label("minmax") == "min-max"
    assert value_label("group_size", 0) == "per-channel"
    assert value_label("group_size", 32) == "g32"
    assert value_label("bits", 3) == "W3"
    assert value_label("zero_point", "float") == "float zero points"
    assert value_label("zero_point", "auto") == "the quantizer's zero points"
    assert activation_label(16, [4]) == "W4A16 (weights only)"
    assert activation_label(4, [4], "dynamic") == "W4A4 (dynamic)"
    assert activation_label(8, [2, 4], "dynamic") == "A8 activations (dynamic)"

    table = make_table(grid(["gptq", "minmax"], [3, 4], [0, 16], [16]))
    fig = pareto_plot(table)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"GPTQ", "min-max", "W3", "W4", "float model"} <= set(legend)
    assert not [t for t in legend if "=" in t]  # no raw field=value labels
    texts = [t.get_text() for t in fig.texts]
    assert "toy: accuracy vs stored bits per weight" in texts  # not the experiment's name
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("stored bits per weight")
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "4.125\nW3/4 per-channel",
        "5\nW3/4 g16",
    ]
    assert "float\n0.9750" in [t.get_text() for t in ax.texts]  # the baseline's value
    deltas = table.assign(delta_score=table["score"] - table["fp_score"])
    ax = pareto_plot(deltas, y="delta_score").axes[0]  # a change from float: float is 0
    assert "float\n0.0000" in [t.get_text() for t in ax.texts]


def test_budget_table_gives_the_pareto_best_per_budget():
    scores = {
        ("minmax", 4, 0, 16): [0.90, 0.91],
        ("gptq", 4, 0, 16): [0.93, 0.94],  # best at the smallest size
        ("minmax", 4, 32, 16): [0.92, 0.93],  # bigger but worse than gptq per-channel
        ("gptq", 4, 16, 16): [0.96, 0.97],  # the biggest and the best
    }
    rows = budget_table(make_table(scores))
    assert rows["configuration"].tolist() == ["GPTQ W4 per-channel", "GPTQ W4 g16"]
    assert rows["budget"].tolist() == ["4.125 ≤ b < 5", "b ≥ 5"]
    assert rows["score"].tolist() == pytest.approx([0.935, 0.965])
    assert rows["delta_float"].tolist() == pytest.approx([-0.04, -0.01])
    assert rows["gain"].iloc[1] == pytest.approx(0.03)
    # the runner-up may sit anywhere within the row's budgets: minmax g32 for b < 5
    assert rows["runner_up"].tolist() == ["min-max W4 g32", "min-max W4 g32"]
    assert rows["runner_up_delta"].tolist() == pytest.approx([-0.01, -0.04])


def test_trained_and_mixed_points_say_so_where_they_stand_alone():
    table = make_table({("minmax", 4, 0, 4): [0.95, 0.96], ("minmax", 3, 0, 16): [0.9, 0.91]})
    table["training"], table["qat_steps"] = "ptq", 0
    table["bits_budget"], table["budget_widths"] = 0.0, "[2, 3, 4]"
    table.loc[table["act_bits"] == 4, ["training", "qat_steps"]] = ["qat lsq", 20]
    table.loc[table["act_bits"] == 16, "bits_budget"] = 3.5  # W3: the width most weights got
    rows = budget_table(table).set_index("act_bits")["configuration"]
    assert rows[4] == "min-max W4 per-channel training qat lsq qat steps 20"  # alone in A4
    assert rows[16] == "min-max W2/3/4 ≤ 3.5 bits per-channel"  # no "W3", no ptq defaults
    ticks = x_ticks(plot_points(table[table["act_bits"] == 16]), "bits_per_weight")[1]
    assert ticks == ["4.125\nmixed per-channel"]


def test_the_report_flags_deltas_within_the_seed_spread():
    scores = {
        ("gptq", 4, 0, 16): [0.950, 0.960, 0.955],
        ("mse", 4, 0, 16): [0.955, 0.950, 0.956],  # -0.0013 +- 0.0078 vs gptq: noise
        ("minmax", 4, 0, 16): [0.900, 0.910, 0.905],  # -0.05 on every seed: real
    }
    table = make_table(scores, fp=(0.95, 0.96, 0.955))
    rows = budget_table(table)
    row = rows.iloc[0]
    assert row["configuration"] == "GPTQ W4 per-channel"
    assert row["delta_float"] == pytest.approx(0.0) and row["delta_float_noise"]
    assert row["runner_up"] == "MSE W4 per-channel" and row["runner_up_delta_noise"]
    text = report(table, title="tiny")
    assert "MSE W4 per-channel: -0.0013 ± 0.0078 ≈ noise" in text
    assert "95 % confidence interval holds 0" in text  # the rule is spelled out

    assert within_noise(-0.05, 0.0, 2) is False
    assert within_noise(0.001, 0.002, 2) is True
    assert within_noise(0.0, np.nan, 1) is False  # one seed: no spread, no flag
    # a 95 % interval: 2 seeds must differ by 12.7 x s / sqrt(2) = 9.0 s, 6 seeds by 1.05 s
    assert within_noise(8.9, 1.0, 2) and not within_noise(9.1, 1.0, 2)
    assert within_noise(1.04, 1.0, 6) and not within_noise(1.06, 1.0, 6)
    seeds = pd.Series([0.900, 0.910, 0.905])
    gptq = pd.Series(scores[("gptq", 4, 0, 16)])
    delta, std, n = paired_difference(seeds, gptq)
    assert (delta, n) == (pytest.approx(-0.05), 3) and std == pytest.approx(0.0, abs=1e-12)


def test_one_seed_flags_nothing():
    scores = {("gptq", 4, 0, 16): [0.95], ("mse", 4, 0, 16): [0.95]}
    table = make_table(scores)
    rows = budget_table(table)
    assert not rows["delta_float_noise"].any() and not rows["runner_up_delta_noise"].any()
    budgets = report(table).split("noise rule:")[1].split("## Best point per quantizer")[0]
    assert NOISE not in budgets.split("\n", 1)[1]  # past the rule's own text


def test_cli_writes_the_plot_and_the_report(tmp_path, capsys):
    table = make_table(grid(["minmax", "gptq"], [3, 4], [0, 32], [4, 16]))
    table.to_parquet(tmp_path / "runs.parquet")
    assert main(["plot", str(tmp_path), "--x", "bits_per_weight", "ideal_bits_per_weight"]) == 0
    for name in ("score_vs_bits_per_weight", "score_vs_ideal_bits_per_weight"):
        for ext in ("png", "svg"):
            assert (tmp_path / "plots" / f"{name}.{ext}").stat().st_size
    first = {p.name: p.read_bytes() for p in (tmp_path / "plots").iterdir()}
    assert main(["plot", str(tmp_path), "--x", "bits_per_weight", "ideal_bits_per_weight"]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "plots").iterdir()} == first  # a rerun
    assert main(["report", str(tmp_path), "--write", "--x", "ideal_bits_per_weight"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "### weights only (float activations)" in text and "### A4 activations" in text
    assert "ideal bits/weight" in text and "| gptq" in text


def test_the_report_states_where_its_rows_were_computed():
    table = make_table({("gptq", 4, 0, 16): [0.95, 0.96]})
    assert "Computed at commit" not in report(table)  # no manifest columns: nothing claimed
    table = table.assign(
        git_commit="d436505bae3b-dirty",
        platform="Linux-x86_64",
        device="cpu:cpu",
        jax_version="0.10.2",
        cpu="Xeon, x86_64 AVX-512",
    )
    text = report(table)
    assert "Computed at commit d436505 on Xeon, x86_64 AVX-512, Linux-x86_64 (cpu:cpu)" in text
    assert "jax 0.10.2" in text and "another CPU" in text


def test_mixed_points_of_two_quantizers_are_compared_apart():
    """Two quantizers' mixed points at one budget were averaged into one row."""
    from q4lab.report import mixed_comparison

    def row(quantizer, allocation, budget, bits, bpw, score):
        return {
            "task": "t",
            "quantizer": quantizer,
            "symmetric": False,
            "allocation": allocation,
            "bits_budget": budget,
            "budget_widths": "[2, 3, 4]",
            "budget_groups": "[]",
            "bits": bits,
            "group_size": 32,
            "bits_per_weight": bpw,
            "score": score,
            "higher_is_better": True,
        }

    table = pd.DataFrame(
        [
            row("hqq", "sensitivity knapsack", 3.5, 2, 3.376, 0.98),
            row("minmax", "sensitivity knapsack", 3.5, 2, 3.285, 0.97),
            row("hqq", "uniform", 0.0, 4, 5.0, 0.99),
            row("minmax", "uniform", 0.0, 4, 4.625, 0.95),
        ]
    )
    # the same quantizer's mixed points of two calibration sizes stay apart too
    other = table.iloc[[1, 3]].assign(calib_size=64, score=[0.5, 0.6], bits_per_weight=[3.4, 4.7])
    both = pd.concat([table.assign(calib_size=0), other], ignore_index=True)
    minmax = mixed_comparison(both).query("quantizer == 'minmax'").set_index("calib_size")
    assert minmax.loc[0, "mixed: score"] == "0.9700" and minmax.loc[64, "mixed: score"] == "0.5000"
    versus = mixed_comparison(table).set_index("quantizer")
    assert versus.loc["hqq", "mixed: bits/weight"] == 3.376
    assert versus.loc["minmax", "mixed: bits/weight"] == 3.285
    assert versus.loc["hqq", "next uniform up"].startswith("W4 g32 (5.000)")
    assert versus.loc["minmax", "next uniform up"].startswith("W4 g32 (4.625)")
    assert mixed_comparison(table[table["allocation"] == "uniform"]).empty  # nothing to compare


def test_the_best_point_per_quantizer_takes_the_smaller_on_a_tie():
    from q4lab.report import best_points

    # asymmetric (larger: its zero points) and symmetric, equal scores: the order of the
    # configurations must not decide
    config = {("mse", 4, 32, 16): [0.9, 0.9]}
    asym = make_table(config).assign(symmetric=False, bits_per_weight=4.625)
    table = pd.concat([asym, make_table(config).assign(symmetric=True)], ignore_index=True)
    best = best_points(table)
    assert len(best) == 1 and best["bits_per_weight"].iloc[0] == 4.5
    assert best["symmetric"].iloc[0]  # shown: the two competed for the row (smaller: sym)

    # a field that varies among rivals for a row is shown; one set by the row's keys is not
    # (act_mode 'none' is A16's; dynamic and static compete at A4)
    rivals = make_table(grid(["minmax"], [4], [0], [16, 4]))
    static = make_table({("minmax", 4, 0, 4): [0.5, 0.5]}).assign(act_mode="static")
    best = best_points(pd.concat([rivals, static], ignore_index=True))
    assert "act_mode" in best and best["act_mode"].tolist() == ["dynamic", "none"]
    assert "act_mode" not in best_points(rivals)


def test_line_styles_do_not_repeat_before_sixteen():
    """They cycled after five: w4a16's ten variants drew two configurations alike."""
    from q4lab.plots import line_style

    assert len({repr(line_style(i)) for i in range(16)}) == 16


def test_a_plot_with_other_styles_or_columns_gets_its_own_file(tmp_path):
    """--style and --columns wrote over the file of the default plot."""
    from q4lab.plots import save_plot

    table = make_table(grid(["gptq", "minmax"], [3, 4], [0, 16], [16, 4]))
    names = [
        save_plot(table, tmp_path, **kwargs)[0].name
        for kwargs in ({}, {"style": "group_size"}, {"columns": None}, {"style": None})
    ]
    assert names == [
        "score_vs_bits_per_weight.png",
        "score_vs_bits_per_weight_style_group_size.png",
        "score_vs_bits_per_weight_columns_none.png",
        "score_vs_bits_per_weight_style_none.png",
    ]


def test_a_mixed_configurations_seeds_are_one_point_whatever_widths_they_got():
    """A budget row's bits is the width most of its weights got: seed 0's allocation gave W3,
    seed 1's W4, and plots and reports split the point into two one-seed configurations."""
    from q4lab.plots import aggregate

    rows = [
        {"seed": s, "bits": b, "score": v, "fp_score": 0.97, "bits_per_weight": x}
        for s, b, v, x in ((0, 3, 0.94, 3.31), (1, 4, 0.98, 3.33))
    ]
    table = pd.DataFrame(rows).assign(
        experiment="mix",
        task="toy",
        quantizer="gptq",
        group_size=0,
        act_bits=16,
        act_mode="none",
        metric="accuracy",
        higher_is_better=True,
        bits_budget=3.5,
        budget_widths="[2, 3, 4]",
    )
    (point,) = aggregate(table, "bits_per_weight", "score").itertuples()
    assert point.seeds == 2 and point.score == pytest.approx(0.96) and point.bits == 3
    assert "2 runs: 1 configuration, 2 seeds." in report(table)


def test_configurations_apart_only_in_other_fields_differ_in_marker_fill():
    """A lone point shows no line style: PTQ and QAT at one size were twin markers."""
    base = make_table({("minmax", 4, 0, 16): [0.90, 0.91]})
    table = pd.concat([base.assign(qat_steps=0), base.assign(qat_steps=100, score=0.95)])
    ax = pareto_plot(table).axes[0]
    fills = {line.get_fillstyle() for line in ax.lines if line.get_marker() not in ("None", "")}
    assert {"full", "none"} <= fills
    # lone points 1 and 7 looked alike (6 fills), without a word: with the marker free of
    # --style they differ by it; where --style holds it, a warning says they look alike
    seven = pd.concat([base.assign(qat_steps=s, score=0.9 + s / 1e4) for s in range(0, 700, 100)])
    ax = pareto_plot(seven).axes[0]
    marks = [line for line in ax.lines if line.get_marker() not in ("None", "", "_")]
    assert len(marks) == 7 and len({(m.get_marker(), m.get_fillstyle()) for m in marks}) == 7
    styled = pd.concat([seven, seven.assign(bits=8, bits_per_weight=8.0)])
    with pytest.warns(UserWarning, match=r"7 configurations of qat_steps share .* look alike"):
        pareto_plot(styled)


def test_tables_concatenated_with_repeated_labels_still_aggregate():
    from q4lab.plots import aggregate

    table = make_table({("gptq", 4, 0, 16): [0.90, 0.91]}).assign(
        bits_budget=3.5, budget_widths="[2, 3, 4]"
    )
    both = pd.concat([table, table.assign(quantizer="minmax")])  # index 0, 1, 0, 1
    assert len(aggregate(both, "bits_per_weight", "score")) == 2


def test_a_seed_with_two_float_models_is_named_in_report_and_plot():
    """charlm seed 1 retrains on each CPU: w4a4's static rows, rerun on another machine, held
    another float model, and the plot's float line averaged the two."""
    table = make_table({("gptq", 4, 0, 16): [0.90, 0.91], ("minmax", 4, 0, 16): [0.88, 0.89]})
    table.loc[(table["quantizer"] == "minmax") & (table["seed"] == 1), "fp_score"] = 0.99
    assert "seed=1 has 2 float models (fp_score 0.9800 on 1 rows, 0.9900 on 1 rows)" in report(
        table
    )
    with pytest.warns(UserWarning, match=r"seed=1 has 2 float models"):
        pareto_plot(table)


def test_directions_fronts_float_lines_and_missing_scores_follow_the_rows():
    """A review of the reports on uneven tables: ptq_score of a perplexity task read as higher
    is better; x one ulp apart (a mean over fewer seeds) split a budget, and an exact tie lost a
    point of the front; the float line averaged rows, not seeds, over the whole task; a point
    whose every seed scored NaN crashed the budget table."""
    ppl = make_table(grid(["minmax"], [4], [0], [16]), fp=(3.9, 3.8), higher=False)
    assert not higher_is_better(ppl.assign(ptq_score=ppl["score"]), "ptq_score")
    assert not higher_is_better(ppl, "fake_rel_diff")
    points = pd.DataFrame({"b": [3.0619915848527355, 3.061991584852735, 3.0, 4.0]})
    points["s"] = [0.90, 0.80, 0.90, 0.95]
    assert pareto_front(points, "b", "s").index.tolist() == [2, 3]  # 3.06 is beaten at 3.0
    points.loc[2, "s"] = 0.5
    assert pareto_front(points, "b", "s").index.tolist() == [2, 0, 3]
    points.loc[1, "s"] = 0.90  # an exact tie at one budget: both
    assert pareto_front(points, "b", "s").index.tolist() == [2, 0, 1, 3]

    scores = grid(["minmax", "gptq"], [4], [0], [16])
    scores[("gptq", 4, 0, 4)] = [0.91]  # A4 ran on seed 0 only, whose float model is 0.97
    table = make_table(scores, fp=(0.97, 0.99))
    fig = pareto_plot(table)
    lines = [
        line.get_ydata()[0] for ax in fig.axes for line in ax.lines if line.get_linestyle() == "--"
    ]
    assert sorted(lines) == pytest.approx([0.97, 0.98])  # A4: seed 0's; A16: both seeds'
    assert "configurations here ran on 1 to 2 seeds" in report(table)
    table.loc[table["quantizer"] == "gptq", "score"] = np.nan
    assert "gptq" not in budget_table(table)["configuration"].str.lower().str.cat()


def test_looks_and_notes_on_tables_with_gaps():
    """A later review: a NaN in a field that tells configurations apart lost the configuration
    its marker, fill and line (the legend said otherwise); lone points whose colours repeat
    (tab10, 11 hues) looked alike without a warning; a NaN score made the seed note fire; a
    table with no score crashed the report; a point with no x joined the front."""
    base = make_table({("minmax", 4, 0, 16): [0.90, 0.91]})
    seven = pd.concat(
        [base.assign(rotation=r, smooth_alpha=np.nan if r in (0, 6) else 0.5) for r in range(7)]
    )
    seven["rotation"] = seven["rotation"].map(lambda r: f"r{r:02d}")
    seven["score"] += seven["rotation"].str[1:].astype(int) / 1e3
    ax = pareto_plot(seven).axes[0]
    marks = [line for line in ax.lines if line.get_marker() not in ("None", "", "_")]
    assert len({(m.get_marker(), m.get_fillstyle()) for m in marks}) == 7
    hues = pd.concat([base.assign(quantizer=f"q{i:02d}", score=0.9 + i / 1e3) for i in range(11)])
    with pytest.warns(UserWarning, match="look alike"):
        pareto_plot(hues.assign(group_size=0))

    scores = grid(["minmax", "gptq"], [4], [0], [16])
    scores[("gptq", 4, 0, 16)] = [0.95, np.nan]
    assert "ran on 1 to 2 seeds" not in report(make_table(scores))  # both ran on two
    report(make_table(scores).assign(score=np.nan))  # no point scored: no crash
    one_seed = make_table({("minmax", 4, 0, 16): [0.9]})
    assert best_points(one_seed)["score_std"].isna().all()  # no spread, not a spread of 0
    points = pd.DataFrame({"b": [np.nan, 3.0, 4.0], "s": [0.99, 0.9, 0.95]})
    assert pareto_front(points, "b", "s").index.tolist() == [1, 2]


def test_an_ablation_pairs_each_configuration_with_itself_at_the_reference_value(tmp_path):
    """`q4lab report --compare FIELD`: each configuration at another value of the field beside
    its twin at the default, paired by seed; where the seeds disagree it is noise. A twin is
    found as a sweep finds one: A4 static and A4 dynamic both meet the weight-only point."""
    from q4lab.ablation import field_comparison

    scores = {("gptq", 3, 0, 16): [0.90, 0.80], ("gptq", 4, 0, 16): [0.95, 0.94]}
    table = make_table(scores).assign(calib_padding="include")
    changed = make_table(scores).assign(calib_padding="exclude")
    changed["score"] += np.where(changed["bits"] == 3, 0.01, [0.002, -0.003] * 2)
    table = pd.concat([changed, table], ignore_index=True)  # the default first or not
    frame = field_comparison(table, "calib_padding").set_index("configuration")
    assert frame.attrs["reference"] == "include" and set(frame["value"]) == {"exclude"}
    w3, w4 = frame.loc["GPTQ W3 per-channel"], frame.loc["GPTQ W4 per-channel"]
    assert (w3["score at reference"], w3["score"]) == pytest.approx((0.85, 0.86))
    assert w3["delta"] == pytest.approx(0.01) and not w3["delta_noise"] and w3["seeds"] == 2
    assert w4["delta"] == pytest.approx(-0.0005) and w4["delta_noise"]
    table.to_parquet(tmp_path / "runs.parquet")
    assert main(["report", str(tmp_path), "--compare", "calib_padding", "--write"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "## What calib_padding changes" in text
    assert "`exclude` is better in 1, worse in 0 and within the noise or equal in 1 of 2" in text
    assert "+0.0100 ± 0.0000" in text and "≈ noise" in text

    acts = make_table(grid(["minmax"], [4], [0], [16, 4], lambda *k: [0.9 + k[3] / 1000] * 2))
    static = acts[acts["act_bits"] == 4].assign(act_mode="static", score=0.85)
    frame = field_comparison(pd.concat([acts, static], ignore_index=True), "act_bits")
    assert sorted(frame["delta"].round(6)) == [-0.066, -0.012]  # static, dynamic vs A16

    with pytest.raises(ValueError, match=r"--compare bit: not a field .*allowed: bits, calib_pad"):
        field_comparison(table, "bit")
    with pytest.raises(ValueError, match=r"calib_padding: not a field .*allowed: bits$"):
        field_comparison(table[table["calib_padding"] == "include"], "calib_padding")
    apart = table[(table["calib_padding"] == "include") == (table["bits"] == 3)]
    with pytest.raises(ValueError, match=r"no configuration ran both at calib_padding='include'"):
        field_comparison(apart, "calib_padding")


def test_a_seed_without_a_score_does_not_narrow_the_interval():
    """A NaN seed was counted in n (a 3-seed t quantile over 2 differences): a delta within
    the noise of its 2 real seeds was marked real."""
    table = make_table({("gptq", 4, 0, 16): [0.95, 0.955, np.nan]}, fp=(0.96, 0.97, 0.98))
    row = budget_table(table).iloc[0]
    assert row["delta_float"] == pytest.approx(-0.0125) and row["delta_float_noise"]
    assert best_points(table)["vs_float"].iloc[0] == NOISE


def test_labels_say_activation_once_and_nothing_of_a_weight_only_points_ranges():
    """'static act. act. clipping MSE'; a weight-only point was labelled by activation clipping
    it never does."""
    from q4lab.report import configuration_label

    point = {"quantizer": "minmax", "bits": 4, "group_size": 128, "act_bits": 4}
    point |= {"act_mode": "static", "act_clipping": "mse"}
    fields = ["act_mode", "act_clipping"]
    label = configuration_label(pd.Series(point), fields)
    assert label == "min-max W4 g128 static act. clipping MSE"
    weight_only = pd.Series(point | {"act_bits": 16, "act_mode": "none"})
    assert configuration_label(weight_only, fields) == "min-max W4 g128 float act."
