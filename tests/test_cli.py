import pytest

from q4lab.cli import main
from q4lab.demo import compare_quantizers, synthetic_weights


def test_demo_compares_every_quantizer_on_every_matrix(capsys):
    assert main(["demo", "--k", "128", "--n", "32"]) == 0
    out = capsys.readouterr().out
    for name in ("minmax", "percentile", "mse", "gaussian", "student_t3", "W4 sym g32 f16"):
        assert name in out


def test_demo_table_has_ledger_bits():
    table = compare_quantizers(synthetic_weights(128, 16))
    g128 = table[table.spec == "W4 sym g128 f16"]
    assert set(g128.bits_per_weight) == {4.125}
    assert (table.rel_sq_error > 0).all()


def test_a_wrong_flag_is_shown_with_its_commands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "results/quickstart", "--wirte"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "q4lab report [-h]" in err and "unrecognized arguments: --wirte" in err


def test_layer_error_refuses_fields_it_does_not_measure(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["layer-error", "--bits", "4", "--act-bits", "4"])
    assert exit_.value.code == 2
    assert "--act-bits is not used: layer-error measures each layer's quantized weights alone" in (
        capsys.readouterr().err
    )


def test_layer_error_quantizes_sequentially_when_asked(capsys):
    """--sequential true was overridden by the command's float inputs, silently."""
    args = ["layer-error", "--bits", "3", "--quantizer", "gptq", "--sequential", "false", "true"]
    assert main(args) == 0
    header, *rows = _table(capsys.readouterr().out)
    assert header[7:9] == ["gptq sequential=False", "gptq sequential=True"]
    first, later = rows[0], rows[-1]
    assert first[7] == first[8] and later[7] != later[8]  # the first layer's inputs are float
    with pytest.raises(SystemExit):
        main(["layer-error", "--float-inputs", "--sequential", "true"])
    assert "--float-inputs and --sequential true contradict" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["layer-error", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--sequential SEQUENTIAL [SEQUENTIAL ...] calibrate each layer" in text
    assert "already quantized (default False)" in text  # its own default, not the sweep's


def _table(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_layer_error_gives_each_configuration_its_own_column(capsys):
    """Two symmetries of one quantizer were averaged into one column, silently."""
    args = ["layer-error", "--bits", "3", "--quantizer", "minmax", "--symmetric"]
    assert main([*args, "true", "false"]) == 0
    header, *rows = _table(capsys.readouterr().out)
    both = {name: [row[header.index(name)] for row in rows] for name in header[7:9]}
    assert list(both) == ["minmax symmetric=True", "minmax symmetric=False"]
    for value in ("true", "false"):
        assert main([*args, value]) == 0
        _, *alone = _table(capsys.readouterr().out)
        assert [row[7] for row in alone] == both[f"minmax symmetric={value.title()}"]
    assert main([*args, "true", "--seed", "0", "1"]) == 0  # seeds were averaged, then dropped
    header, *rows = _table(capsys.readouterr().out)
    assert header[1] == "seed" and [row[1] for row in rows] == ["0"] * 3 + ["1"] * 3
    assert [row[7] for row in rows[:3]] == both["minmax symmetric=True"]
