"""Packed export: save -> load gives the same integer forward bit for bit, the file is the ledger's
bytes, and a newer, missing or corrupted file is refused with an error naming what is wrong."""

import contextlib
import dataclasses
import json
import shutil
import stat
import struct

import flax.linen as nn
import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from user_models import UserCNN, UserNNX  # pytest puts tests/ on the path

from q4lab.core import QuantSpec
from q4lab.export import CONFIG_FILE, FORMAT_VERSION, load, weights_path
from q4lab.quantize_model import quantize_model
from q4lab.recipe import ActSpec, Recipe, Rule, TransformSpec

# One recipe per framework covers every kind of stored array (one quantization each). The rules
# are those of tests/test_qat.py, whose compiled shapes the suite then shares.
W4A4_G4 = Rule(weight=QuantSpec(group_size=4), act=ActSpec())
W3_STATIC = Rule(  # GPTQ act-order (perm), asymmetric W3 (zeros), static asymmetric activations
    quantizer="gptq",
    options={"act_order": True},
    weight=QuantSpec(bits=3, symmetric=False, group_size=8, scale_dtype="float16"),
    act=ActSpec(mode="static", granularity="per_tensor", symmetric=False),
)
ROTATED = Rule(  # smoothing + Hadamard rotation (smooth, seed) under GPTQ act-order
    quantizer="gptq",
    options={"act_order": True},
    weight=QuantSpec(group_size=8),
    act=ActSpec(),
    transform=TransformSpec(rotation="hadamard", smooth_alpha=0.5),
)
LINEN = Recipe(
    (
        Rule.float("head"),  # saved with the recipe, counted as float
        dataclasses.replace(W4A4_G4, pattern="Conv_0|head"),
        dataclasses.replace(W3_STATIC, pattern="Conv_1"),
        dataclasses.replace(ROTATED, pattern="Dense_0"),
        Rule(pattern="split", weight=QuantSpec(symmetric=False, group_size=4)),  # weight-only
        Rule(  # einsum, bf16 scales, GPTQ's symmetric grid
            pattern="mix", weight=QuantSpec(scale_dtype="bfloat16", symmetric_grid="half_step")
        ),
    )
)
NNX = Recipe(
    (
        dataclasses.replace(W4A4_G4, pattern="conv"),
        dataclasses.replace(W3_STATIC, pattern="fc"),
        dataclasses.replace(ROTATED, pattern="head"),
    )
)


@pytest.fixture(scope="module")
def saved_linen(linen, tmp_path_factory):
    model, params, x = linen
    qm = quantize_model(model, params, LINEN, sample_input=x, calibration=[x, -x])
    return qm, qm.save(tmp_path_factory.mktemp("linen")), x


@pytest.fixture(scope="module")
def saved_nnx(nnx_model, tmp_path_factory):
    model, x = nnx_model
    qm = quantize_model(model, None, NNX, sample_input=x, calibration=[x, -x])
    return qm, qm.save(tmp_path_factory.mktemp("nnx")), x


def _roles(directory):
    return {
        e["role"] for e in json.loads((directory / CONFIG_FILE).read_text())["tensors"].values()
    }


def test_linen_round_trip_is_bit_for_bit(saved_linen):
    qm, directory, x = saved_linen
    assert {"perm", "smooth", "seed", "zero", "act_scale", "act_zero", "float"} <= _roles(directory)
    loaded = load(directory, UserCNN())
    np.testing.assert_array_equal(np.asarray(loaded.apply(x)), np.asarray(qm.apply(x)))
    assert loaded.ledger() == qm.ledger()
    assert {p: lp.rule for p, lp in loaded.layers.items()} == {
        p: lp.rule for p, lp in qm.layers.items()
    }
    assert loaded.recipe == qm.recipe == LINEN
    specs = [
        d["qtensor"]["spec"] for d in json.loads((directory / CONFIG_FILE).read_text())["layers"]
    ]
    assert [s.get("symmetric_grid") for s in specs].count("half_step") == 1  # written where not max
    with pytest.raises(ValueError, match=r"fake=True is invalid.*float weights"):
        loaded.apply(x, fake=True)


def test_nnx_round_trip_replaces_the_given_models_weights(saved_nnx):
    qm, directory, x = saved_nnx
    assert {"perm", "smooth", "seed", "zero", "act_scale", "act_zero", "float"} <= _roles(directory)
    loaded = load(directory, UserNNX(nnx.Rngs(7)))  # other float weights: none are read
    np.testing.assert_array_equal(np.asarray(loaded.apply(x)), np.asarray(qm.apply(x)))
    assert loaded.ledger() == qm.ledger()
    # a loaded model saves again to the same tensors
    again = json.loads((loaded.save(directory.parent / "again") / CONFIG_FILE).read_text())
    first = json.loads((directory / CONFIG_FILE).read_text())
    assert again["tensors"] == first["tensors"] and again["layers"] == first["layers"]


def test_a_kmajor_model_multiplies_as_the_rows_model_and_round_trips(saved_linen, tmp_path):
    """Laid out for the Mosaic kernels: the 4-bit layers hold their codes K-major (the 3-bit one
    keeps rows), the forward reads them through the xla form (the rows model's CPU path sums in
    another order) and the file records each layer's layout."""
    qm, _, x = saved_linen
    kmajor = qm.relayout("kmajor")
    layouts = {
        p: kmajor.params[lp.layer.key[0]][lp.layer.key[1]].layout for p, lp in qm.layers.items()
    }
    assert layouts["Conv_1"] == "rows" and list(layouts.values()).count("kmajor") >= 3
    assert kmajor.ledger().total_bytes <= qm.ledger().total_bytes  # no padding of odd N
    np.testing.assert_allclose(kmajor.apply(x), qm.apply(x), rtol=1e-5, atol=1e-5)
    directory = kmajor.save(tmp_path / "kmajor")
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert {
        p: d["qtensor"]["layout"] for p, d in zip(qm.layers, config["layers"], strict=True)
    } == layouts
    assert config["format_version"] == 2  # a version-1 reader would misread it
    loaded = load(directory, UserCNN())
    np.testing.assert_array_equal(np.asarray(loaded.apply(x)), np.asarray(kmajor.apply(x)))
    assert loaded.ledger() == kmajor.ledger()
    rows = loaded.relayout("rows")  # back to the CPU's path: the rows model's numbers exactly
    np.testing.assert_array_equal(np.asarray(rows.apply(x)), np.asarray(qm.apply(x)))
    assert rows.ledger() == qm.ledger() and rows.config == loaded.config


def test_a_rows_model_is_written_and_read_as_version_1(saved_linen, tmp_path):
    """Codes all in rows: the file a version-1 reader reads right, and one written before layouts
    (no "layout" field) loads as rows; a layout this reader does not know is named."""
    qm, directory, x = saved_linen
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["format_version"] == 1
    for d in config["layers"]:
        del d["qtensor"]["layout"]
    old = _copy(directory, tmp_path)
    _as_before_digests(old)
    (old / CONFIG_FILE).write_text(json.dumps(config))
    np.testing.assert_array_equal(
        np.asarray(load(old, UserCNN()).apply(x)), np.asarray(qm.apply(x))
    )
    config["layers"][0]["qtensor"]["layout"] = "diagonal"
    (old / CONFIG_FILE).write_text(json.dumps(config))
    layer = "/".join(map(str, config["layers"][0]["key"]))
    unknown = rf"layer {layer}: layout='diagonal' is unknown; allowed: rows, kmajor"
    with pytest.raises(ValueError, match=unknown):
        load(old, UserCNN())


def test_file_bytes_are_the_ledgers(saved_linen, saved_nnx):
    for qm, directory, _ in (saved_linen, saved_nnx):
        data = weights_path(directory).read_bytes()
        header = 8 + struct.unpack("<Q", data[:8])[0]
        acts = sum(
            int(getattr(a, r).nbytes)
            for a in qm.acts.values()
            for r in ("scale", "zero")
            if getattr(a, r) is not None
        )
        assert len(data) - header == qm.ledger().total_bytes + acts
        assert len(data) <= 1.01 * qm.ledger().total_bytes + 64 * 1024
        # as readable as q4lab.json (safetensors writes its file private)
        modes = {
            stat.S_IMODE((directory / f).stat().st_mode)
            for f in (weights_path(directory).name, CONFIG_FILE)
        }
        assert len(modes) == 1


def _copy(directory, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(directory, out)
    return out


def _as_before_digests(directory):
    """The saved model as files written before its weights named their config's sha256 (so a
    test may edit the config as older files allowed)."""
    path = weights_path(directory)
    version = json.loads((directory / CONFIG_FILE).read_text())["format_version"]
    arrays = safetensors.numpy.load_file(path)
    safetensors.numpy.save_file(arrays, path, metadata={"format": f"q4lab.packed/{version}"})


def test_newer_version_missing_file_and_wrong_model_are_refused(saved_linen, tmp_path):
    _, directory, _ = saved_linen
    bad = _copy(directory, tmp_path)
    config = json.loads((bad / CONFIG_FILE).read_text())
    (bad / CONFIG_FILE).write_text(json.dumps(config | {"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(
        ValueError, match=f"format version {FORMAT_VERSION + 1}.*up to {FORMAT_VERSION}"
    ):
        load(bad, UserCNN())
    (bad / CONFIG_FILE).unlink()
    with pytest.raises(ValueError, match=f"{CONFIG_FILE} is missing"):
        load(bad, UserCNN())
    shutil.copy(directory / CONFIG_FILE, bad / CONFIG_FILE)
    weights = weights_path(bad)
    weights.unlink()
    with pytest.raises(ValueError, match=f"{weights.name} is missing"):
        load(bad, UserCNN())
    with pytest.raises(ValueError, match=r"model=None is invalid.*UserCNN"):
        load(directory)
    with pytest.raises(ValueError, match="saved from a linen model"):
        load(directory, UserNNX(nnx.Rngs(0)))


class Other(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(5, name="head")(x.reshape(x.shape[0], -1))


@contextlib.contextmanager
def _named(cls, name):
    """``cls`` under another class name for a while (the saved class, its code edited)."""
    old = cls.__name__
    cls.__name__ = name
    try:
        yield cls
    finally:
        cls.__name__ = old


def test_a_linen_model_of_another_architecture_is_named_at_its_first_call(saved_linen):
    """Another class is refused at load; a class of the saved name whose code changed since
    (its fields alike) at its first call, where its parameters are known."""
    _, directory, x = saved_linen
    with pytest.raises(ValueError, match=r"model=Other is invalid .* saved from a user_models.Us"):
        load(directory, Other())
    with _named(Other, "UserCNN"):  # UserCNN's source, edited
        loaded = load(directory, Other())  # a Linen module holds no parameters to compare yet
        with pytest.raises(ValueError, match=r"model is not of the saved architecture \(.*UserCN"):
            loaded.apply(x)


class Shorter(nn.Module):
    """`UserCNN`'s first layers and head, skipping its DenseGeneral and Einsum: it reads some of
    the saved parameters, each of its shape, and would run without a Flax error."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME")(x))
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), padding="VALID")(x))
        x = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        return nn.Dense(5, name="head")(x[:, :8])


def test_a_linen_model_reading_fewer_parameters_is_refused(saved_linen):
    _, directory, x = saved_linen
    with (
        _named(Shorter, "UserCNN"),
        pytest.raises(  # UserCNN's source, edited
            ValueError, match=r"parameters it lacks: \['mix/bias', 'mix/kernel', 'split"
        ),
    ):
        load(directory, Shorter()).apply(x)


def _tensor_span(path, name):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    start, end = json.loads(data[8 : 8 + n])[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


def test_corrupted_or_reshaped_tensor_is_named(saved_linen, saved_nnx, tmp_path):
    _, directory, _ = saved_linen
    bad = _copy(directory, tmp_path)
    start, _ = _tensor_span(weights_path(bad), "Dense_0/kernel.codes")
    data = bytearray(weights_path(bad).read_bytes())
    data[start] ^= 0x10
    weights_path(bad).write_bytes(bytes(data))
    with pytest.raises(
        ValueError, match=r"'Dense_0/kernel.codes' \(codes of layer 'Dense_0'\).*corrupted"
    ):
        load(bad, UserCNN())
    weights_path(bad).write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load(bad, UserCNN())
    shutil.copy(weights_path(directory), weights_path(bad))
    config = json.loads((bad / CONFIG_FILE).read_text())
    config["tensors"]["head/bias"]["shape"] = [6]
    (bad / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"q4lab.json does not describe weights-.*sha256 differs"):
        load(bad, UserCNN())  # a config edited by hand
    _as_before_digests(bad)
    (bad / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'head/bias' \(float\).*records float32\[6\]"):
        load(bad, UserCNN())

    config = json.loads((directory / CONFIG_FILE).read_text())
    (layer,) = (d for d in config["layers"] if d["path"] == "Dense_0")
    layer["qtensor"]["spec"]["bits"] = 8  # its codes are 4-bit ones
    (bad / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"layer Dense_0/kernel: .*W8 sym g8.*its codes is uint8"):
        load(bad, UserCNN())

    class Wider(UserNNX):
        def __init__(self, rngs):
            super().__init__(rngs)
            self.head = nnx.Linear(16, 6, rngs=rngs)

    with pytest.raises(ValueError, match=r"model=Wider is invalid .*saved from a user_models"):
        load(saved_nnx[1], Wider(nnx.Rngs(0)))
    Wider.__name__ = "UserNNX"  # UserNNX's source, edited: its head's width
    with pytest.raises(ValueError, match=r"UserNNX\(...\) is .*otherwise .*head.out_features: sa"):
        load(saved_nnx[1], Wider(nnx.Rngs(0)))


def test_a_task_model_loads_by_name(tmp_path, monkeypatch):
    import q4lab.tasks.base as tasks_base
    from q4lab.tasks import get_task

    task = get_task("digits-mlp")
    x = task.sample_input(0)
    params = task.model.init(jax.random.key(0), x)["params"]
    qm = quantize_model(task.model, params, Recipe.single(), sample_input=x)
    loaded = load(qm.save(tmp_path, task="digits-mlp"))
    np.testing.assert_array_equal(np.asarray(loaded.apply(x)), np.asarray(qm.apply(x)))
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["model"]["task"] == "digits-mlp"
    with pytest.raises(ValueError, match="task='charlm' is invalid"):
        qm.save(tmp_path / "other", task="charlm")
    # loaded in a process that has not imported the task's module: both ways out are named
    monkeypatch.delitem(tasks_base._TASKS, "digits-mlp")
    with pytest.raises(ValueError, match=r"'digits-mlp', which is not registered.*import the "
                       r"module that registers it.*model=<a MLP instance>"):  # fmt: skip
        load(tmp_path)


def test_saving_over_a_saved_model_needs_overwrite(saved_linen, tmp_path):
    """Also: saving is deterministic, file bytes and all (so a file's hash identifies a model)."""
    qm, directory, _ = saved_linen
    before = weights_path(directory).read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds a saved model.*overwrite=True"):
        qm.save(directory)
    assert weights_path(directory).read_bytes() == before
    again = qm.save(tmp_path / "again")
    assert qm.save(again, overwrite=True) == again
    assert weights_path(again).read_bytes() == before


def test_overwriting_removes_no_file_outside_the_directory(saved_linen, tmp_path):
    """A config edited to name weights elsewhere: the save over it leaves that file alone."""
    qm, _, x = saved_linen
    directory = qm.save(tmp_path / "model")
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"not q4lab's")
    config = json.loads((directory / CONFIG_FILE).read_text())
    for name in ("../victim.safetensors", str(victim)):
        (directory / CONFIG_FILE).write_text(json.dumps({**config, "weights_file": name}))
        qm.save(directory, overwrite=True)
        assert victim.read_bytes() == b"not q4lab's"
    np.testing.assert_array_equal(load(directory, UserCNN()).apply(x), qm.apply(x))


def _cut_short_before_the_config(monkeypatch):
    """Saving is killed after its weights are written, before q4lab.json is."""
    import q4lab.export.saving as export

    real = export.atomic_write_bytes

    def cut_short(path, data):
        if path.name == CONFIG_FILE:
            raise OSError("killed")
        real(path, data)

    monkeypatch.setattr(export, "atomic_write_bytes", cut_short)


def test_a_save_cut_short_leaves_the_model_it_replaces(saved_linen, tmp_path, monkeypatch):
    """The weights were renamed into place before q4lab.json: a save cut short between the two
    left new weights beside the old config, a model that loaded neither way. Now the config is
    the commit: the old model loads until it is replaced, and its weights file goes after."""
    qm, directory, x = saved_linen
    out = _copy(directory, tmp_path)
    other = quantize_model(UserCNN(), qm.float_params, Recipe.single(), sample_input=x)
    _cut_short_before_the_config(monkeypatch)
    with pytest.raises(OSError, match="killed"):
        other.save(out, overwrite=True)
    np.testing.assert_array_equal(np.asarray(load(out, UserCNN()).apply(x)), qm.apply(x))
    monkeypatch.undo()
    other.save(out, overwrite=True)
    np.testing.assert_array_equal(np.asarray(load(out, UserCNN()).apply(x)), other.apply(x))
    assert [p.name for p in out.glob("*.safetensors")] == [weights_path(out).name]


def test_a_config_that_does_not_fit_its_weights_is_named(saved_linen, tmp_path):
    """A config flag flipped by hand (a layer's transform) dropped tensors that were read and
    checked, and the model computed otherwise; a malformed config raised a bare KeyError."""
    _, directory, _ = saved_linen
    bad = _copy(directory, tmp_path)
    _as_before_digests(bad)  # as an older file: no digest to refuse the edit first
    config = json.loads((directory / CONFIG_FILE).read_text())
    (rotated,) = [d for d in config["layers"] if d["qtensor"]["transform"]][:1]
    rotated["qtensor"]["transform"] = False
    (bad / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"leaves tensor\(s\) \[.*\.seed.*\] of the weights unused"
    ):
        load(bad, UserCNN())
    config = json.loads((directory / CONFIG_FILE).read_text())
    del config["layers"][0]["rule_index"]
    (bad / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"q4lab.json is malformed: KeyError: 'rule_index'"):
        load(bad, UserCNN())
    for field, value in (("format_version", 0), ("weights_file", "../weights.safetensors")):
        config = json.loads((directory / CONFIG_FILE).read_text()) | {field: value}
        (bad / CONFIG_FILE).write_text(json.dumps(config))
        with pytest.raises(ValueError, match=f"{field}={value!r} is invalid; allowed"):
            load(bad, UserCNN())


def test_float64_parameters_are_counted_as_jax_holds_them(saved_linen, tmp_path):
    """float64 numpy parameters (an .npz checkpoint) were counted at 8 bytes each while JAX
    computed with float32, and a saved model loaded to a smaller ledger than it was saved with."""
    qm, _, x = saved_linen
    wide = jax.tree.map(lambda a: np.asarray(a, np.float64), qm.float_params)
    again = quantize_model(UserCNN(), wide, Recipe.single(), sample_input=x)
    loaded = load(again.save(tmp_path / "f64"), UserCNN())
    assert loaded.ledger() == again.ledger()
    narrow = quantize_model(UserCNN(), qm.float_params, Recipe.single(), sample_input=x)
    assert again.ledger() == narrow.ledger()


class Activated(nn.Module):
    act: object = nn.relu
    names: frozenset = frozenset()

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(self.act(nn.Dense(4)(x.reshape(x.shape[0], -1))))


class Dropped(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(6, 3, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(2, 6, decode=False, rngs=rngs)


def test_settings_name_what_computes_and_nothing_else():
    """A model's settings tell relu from relu6 (both custom_jvp: their text was alike), read a
    set in one order whatever the hash seed, and leave out what changes no inference output:
    train/eval flags (MultiHeadAttention's start as None), the RNG streams' names."""
    from q4lab.model_settings import differences, settings

    refused = differences(settings(Activated()), settings(Activated(act=nn.relu6)))
    assert refused == ["the model.act: saved relu, given relu6"]
    names = settings(Activated(names=frozenset({"query", "key", "value"})))[""]["names"]
    assert names == "{'key', 'query', 'value'}"
    plain = settings(Dropped(nnx.Rngs(0)))
    streams = Dropped(nnx.Rngs(params=0, dropout=1))
    streams.eval()
    assert differences(plain, settings(streams)) == []
    wider = settings(Dropped(nnx.Rngs(0)))
    wider["fc"]["out_features"] = "4"
    assert differences(plain, wider) == ["fc.out_features: saved 3, given 4"]


def test_saving_removes_only_its_own_files(saved_linen, tmp_path, monkeypatch):
    """Saving deleted every weights*.safetensors in the directory (a user's backup too) and
    took a first save cut short, which left weights but no config, for a saved model."""
    qm, directory, x = saved_linen
    out = _copy(directory, tmp_path)
    (out / "weights_fp32_backup.safetensors").write_bytes(b"mine")
    qm.save(out, overwrite=True)
    assert (out / "weights_fp32_backup.safetensors").read_bytes() == b"mine"
    fresh = tmp_path / "fresh"
    _cut_short_before_the_config(monkeypatch)
    with pytest.raises(OSError, match="killed"):
        qm.save(fresh)
    monkeypatch.undo()
    (fresh / "weights-0123456789abcdef.safetensorsq1w2e3.tmp").write_bytes(b"killed")
    qm.save(fresh)  # no config: no model to overwrite; the orphan and a killed save's temp go
    assert sorted(p.name for p in fresh.iterdir()) == sorted(
        [CONFIG_FILE, weights_path(fresh).name]
    )
    np.testing.assert_array_equal(np.asarray(load(fresh, UserCNN()).apply(x)), qm.apply(x))
