import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q4lab import autotune_cache
from q4lab.core import QuantSpec, dequantize_matrix, relayout
from q4lab.manifest import manifest
from q4lab.ops import autotune, candidates, choose, int_matmul, on_gpu, w4a16_matmul
from q4lab.quantizers import get_quantizer

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
GROUPED = QuantSpec(bits=4, group_size=16)
PER_CHANNEL = QuantSpec(bits=4, symmetric=False, granularity="per_channel")


def _weight(spec, k=64, n=32, perm=False):
    w = jax.random.normal(jax.random.key(0), (k, n))
    qt = get_quantizer("minmax").quantize(w, spec)
    if perm:
        qt = dataclasses.replace(qt, perm=jnp.arange(k, dtype=jnp.int32)[::-1])
    return qt


@pytest.fixture
def quick(monkeypatch):
    """Few, short timing rounds: the tests check what is picked and kept, not speed."""
    monkeypatch.setattr(autotune, "ROUNDS", 2)
    monkeypatch.setattr(autotune, "SECONDS", 0.0)


def test_measure_picks_the_fastest_path_that_runs_and_agrees(quick):
    right = lambda x: x * 2.0  # noqa: E731
    slow = lambda x: (time.sleep(0.005), x * 2.0)[1]  # noqa: E731

    def fails(x):
        raise RuntimeError("does not lower here")

    paths = {"slow": slow, "fast": right, "wrong": lambda x: x * 2.0 + 1.0, "fails": fails}
    entry = autotune.measure(paths, [(np.ones(4, np.float32),)], trusted=right)
    assert entry["impl"] == "fast"
    assert set(entry["ms"]) == {"slow", "fast"} and entry["ms"]["slow"] >= 5
    assert entry["rejected"]["wrong"].startswith("disagrees")
    assert "does not lower here" in entry["rejected"]["fails"]
    with pytest.raises(RuntimeError, match="no path ran and agreed"):
        autotune.measure({"wrong": paths["wrong"]}, [(np.ones(4, np.float32),)], trusted=right)


def test_the_rules_pick_stays_unless_another_path_is_more_than_the_slack_faster(monkeypatch):
    seconds = {"fast": 1.0, "close": 1.09, "far": 1.11}  # x the fastest; SLACK is 10 %
    monkeypatch.setattr(autotune, "time_paths", lambda paths, args, s: seconds)
    same = lambda x: x  # noqa: E731
    paths, args = dict.fromkeys(seconds, same), [(np.ones(2, np.float32),)]
    for rules, runs in {"close": "close", "far": "fast", "fast": "fast", None: "fast"}.items():
        entry = autotune.measure(paths, args, same, rules=rules)
        assert entry["impl"] == runs and entry["rules"] == rules
    assert autotune.decide(entry["ms"], "close") == "close"  # a kept entry, today's rules
    assert autotune.decide(entry["ms"], "far") == "fast"
    assert autotune.decide(entry["ms"], "rejected") == "fast"  # not timed


@pytest.mark.skipif(on_gpu(), reason="the CPU's candidates (a GPU adds its kernels)")
def test_candidates_name_each_form_once_on_cpu():
    grouped, per_channel = _weight(GROUPED), _weight(PER_CHANNEL)
    assert candidates(grouped, 4) == ("reference", "blocked")  # xla's form is the reference's
    assert candidates(grouped, 4, dtype=jnp.bfloat16) == ("reference", "xla", "blocked")
    assert candidates(per_channel, 4) == ("reference", "xla", "blocked")
    assert candidates(grouped, 4, w4a4=True, dtype=jnp.int8) == ("xla", "blocked")
    assert candidates(relayout(grouped, "kmajor"), 4) == ("reference",)
    assert candidates(relayout(per_channel, "kmajor"), 4) == ("reference", "xla")
    # W4A4's einsum holds [M, G, N] int32: past 2 GiB only blocked is timed (and trusted)
    assert candidates(grouped, 5_000_000, w4a4=True, dtype=jnp.int8) == ("blocked",)


def test_key_tells_apart_what_changes_the_fastest_path():
    qt = _weight(GROUPED)
    base = autotune.key(qt, 16, w4a4=False, dtype=jnp.float32)
    assert base == "w4a16 64x32 g16 float32 sym rows m16 float32"
    others = {
        autotune.key(qt, 1, w4a4=False, dtype=jnp.float32),
        autotune.key(qt, 16, w4a4=True, dtype=jnp.int8),
        autotune.key(qt, 16, w4a4=False, dtype=jnp.bfloat16),
        autotune.key(_weight(PER_CHANNEL), 16, w4a4=False, dtype=jnp.float32),
        autotune.key(relayout(qt, "kmajor"), 16, w4a4=False, dtype=jnp.float32),
        autotune.key(_weight(GROUPED, perm=True), 16, w4a4=False, dtype=jnp.float32),
    }
    assert base not in others and len(others) == 6


def test_stand_in_has_the_weights_structure_with_concrete_random_arrays():
    qt = _weight(PER_CHANNEL, perm=True)
    seen = []

    @jax.jit
    def traced(qt):  # the weight is a tracer here, as in a jitted model
        seen.append(autotune.stand_in(qt))
        return qt.scale

    traced(qt)
    (stand_in,) = seen
    leaves, like = jax.tree_util.tree_leaves(stand_in), jax.tree_util.tree_leaves(qt)
    assert jax.tree_util.tree_structure(stand_in) == jax.tree_util.tree_structure(qt)
    assert [(a.shape, a.dtype) for a in leaves] == [(a.shape, a.dtype) for a in like]
    assert all(isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) for a in leaves)
    assert sorted(np.asarray(stand_in.perm).tolist()) == list(range(qt.k))
    assert len(np.unique(np.asarray(stand_in.codes))) > 16  # random bytes, not a constant


def test_auto_measures_each_new_call_once_inside_jit_and_agrees(quick, monkeypatch):
    qt = _weight(GROUPED)
    x = jax.random.normal(jax.random.key(1), (3, qt.k))
    measured = []
    measure = autotune.measure
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: measured.append(1) or measure(*a, **k))
    table = {}
    with autotune.use(table):
        y = jax.jit(w4a16_matmul)(x, qt)
        jax.jit(lambda x, qt: w4a16_matmul(x, qt) + 1)(x, qt)  # a new trace, the same call
        xc = jnp.asarray(np.random.default_rng(0).integers(-7, 8, (3, qt.k)), jnp.int8)
        y4 = jax.jit(int_matmul)(xc, jnp.ones((3, 1)), qt)
    assert measured == [1, 1]
    np.testing.assert_allclose(y4, int_matmul(xc, jnp.ones((3, 1)), qt, impl="reference"), 1e-5)
    w4a16 = table["w4a16 64x32 g16 float32 sym rows m3 float32"]
    assert set(w4a16["ms"]) | set(w4a16["rejected"]) == set(candidates(qt, 3))
    assert {"reference", "blocked"} <= set(w4a16["ms"])  # the XLA forms run everywhere
    fastest, ms = min(w4a16["ms"], key=w4a16["ms"].get), w4a16["ms"]
    kept = w4a16["rules"] == "blocked" and ms["blocked"] <= (1 + autotune.SLACK) * ms[fastest]
    assert w4a16["impl"] == ("blocked" if kept else fastest)
    assert table["w4a4 64x32 g16 float32 sym rows m3 int8"]["impl"] in ("xla", "blocked")
    np.testing.assert_allclose(y, x @ dequantize_matrix(qt), rtol=1e-5, atol=1e-5)


def test_a_kept_entry_over_other_candidates_is_measured_again(quick):
    qt = _weight(GROUPED)
    entry_key = autotune.key(qt, 2, w4a4=False, dtype=jnp.float32)
    kept = {"ms": {"reference": 1.0, "blocked": 1.0, "pallas": 0.1}, "rejected": {}}  # a GPU's
    table = {entry_key: {"impl": "pallas", "rules": "blocked", **kept}}
    with autotune.use(table):
        assert choose(qt, 2) in ("reference", "blocked")
    assert set(table[entry_key]["ms"]) == {"reference", "blocked"}
    table[entry_key]["ms"] = {"reference": 1.0, "blocked": 5.0}  # the same candidates: kept
    with autotune.use(table):
        assert choose(qt, 2) == "reference"


def test_a_call_with_one_candidate_is_not_timed():
    qt = relayout(_weight(GROUPED), "kmajor")  # float32 x: only the reference form reads it
    table = {}
    with autotune.use(table):
        assert choose(qt, 4) == "xla" and table == {}  # the rules' name for that form


def test_when_measuring_fails_the_rules_pick_runs_with_one_warning(monkeypatch):
    qt, tries = _weight(GROUPED), []

    def out_of_memory(*args, **kwargs):
        tries.append(1)
        raise MemoryError("stand-ins do not fit")

    monkeypatch.setattr(autotune, "weight_copies", out_of_memory)
    monkeypatch.setattr(autotune, "_failed", set())
    table = {}
    with autotune.use(table), pytest.warns(RuntimeWarning, match="stand-ins do not fit.*rules"):
        assert choose(qt, 2) == "blocked"
    with autotune.use(table), warnings.catch_warnings():
        warnings.simplefilter("error")  # not tried, nor said, again in this process
        assert choose(qt, 2) == "blocked"
    assert table == {} and tries == [1]


def test_mosaic_is_a_candidate_only_for_kmajor_codes(monkeypatch):
    from q4lab.ops import matmul

    monkeypatch.setattr(matmul, "on_gpu", lambda backend=None: True)  # a Hopper GPU, as seen
    monkeypatch.setattr(matmul, "_mosaic_runs", lambda *a, **k: True)
    monkeypatch.setattr(matmul.pallas_gpu, "unsupported", lambda *a, **k: None)
    qt = _weight(PER_CHANNEL)
    assert matmul.candidates(qt, 16, dtype=jnp.bfloat16) == (
        "reference",
        "xla",
        "blocked",
        "pallas",
    )
    kmajor = relayout(qt, "kmajor")
    assert matmul.candidates(kmajor, 16, dtype=jnp.bfloat16) == ("reference", "xla", "mosaic")
    assert matmul.candidates(kmajor, 16, w4a4=True, dtype=jnp.int8) == ("xla", "mosaic")


def test_a_table_in_use_in_one_thread_is_not_in_use_in_another():
    seen = {}
    with autotune.use({}):
        worker = threading.Thread(target=lambda: seen.update(table=autotune.current()))
        worker.start()
        worker.join()
        assert autotune.current() == {}
    assert seen == {"table": None}


def test_another_backend_follows_the_rules_untimed():
    qt, other = _weight(GROUPED), "cpu" if on_gpu() else "gpu"
    table = {}
    with autotune.use(table):
        picked = choose(qt, 16, backend=other, dtype=jnp.bfloat16)
    assert picked == choose(qt, 16, backend=other, dtype=jnp.bfloat16) and table == {}


def test_device_table_keeps_choices_for_the_next_process(quick, tmp_path, monkeypatch):
    path = tmp_path / "autotune" / "cpu.json"
    qt = _weight(PER_CHANNEL)
    with autotune.use(autotune_cache.DeviceTable(path)):
        picked = choose(qt, 5)
        assert manifest()["dispatch"] == "autotuned"
    assert manifest()["dispatch"] == "rules"
    data = json.loads(path.read_text())
    (entry_key,) = data["choices"]
    assert data["format"] == autotune_cache.FORMAT and data["choices"][entry_key]["impl"] == picked
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured again"))
    later = autotune_cache.DeviceTable(path)  # another process: reads, does not time
    with autotune.use(later):
        assert choose(qt, 5) == picked
    assert dict(later) == data["choices"]


def test_device_tables_sharing_a_file_merge_their_entries(tmp_path):
    path = tmp_path / "choices.json"
    first, second = autotune_cache.DeviceTable(path), autotune_cache.DeviceTable(path)
    assert len(first) == 0 and len(second) == 0  # both read the (missing) file
    first["a"], second["b"] = {"impl": "xla", "ms": {"xla": 1.0}}, {"impl": "blocked", "ms": {}}
    assert set(json.loads(path.read_text())["choices"]) == {"a", "b"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{trunc",
        "[]",
        '{"format": 0, "choices": {}}',
        '{"format": 1, "choices": {"k": {"impl": "blocked", "ms": null}}}',  # failed the call
        '{"format": 1, "choices": {"k": {"impl": "blocked", "ms": {"blocked": "1"}}}}',
    ],
)
def test_an_unreadable_file_costs_a_warning_and_is_replaced(quick, tmp_path, text):
    path = tmp_path / "choices.json"
    path.write_text(text)
    table = autotune_cache.DeviceTable(path)
    with autotune.use(table), pytest.warns(RuntimeWarning, match="measuring again"):
        picked = choose(_weight(GROUPED), 2)
    (entry,) = json.loads(path.read_text())["choices"].values()
    assert entry["impl"] == picked


def test_an_unwritable_cache_costs_a_warning_and_keeps_choices_in_memory(quick, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    table = autotune_cache.DeviceTable(blocker / "choices.json")  # a file where a folder must be
    with autotune.use(table), pytest.warns(RuntimeWarning, match="keeps its choices in memory"):
        picked = choose(_weight(GROUPED), 2)
    assert [entry["impl"] for entry in table.values()] == [picked]


def test_cache_file_is_per_device_kind_and_jax_version(monkeypatch, tmp_path):
    monkeypatch.setenv("Q4LAB_CACHE", str(tmp_path))
    h200 = types.SimpleNamespace(platform="cuda", device_kind="NVIDIA H200")
    path = autotune_cache.cache_file(h200)
    assert path == tmp_path / "autotune" / f"cuda-NVIDIA-H200-jax{jax.__version__}.json"
    monkeypatch.setattr(autotune_cache, "cpu_name", lambda: "Intel Xeon Platinum 8488C")
    monkeypatch.setattr(autotune_cache, "cores", lambda: 2)
    cpu = types.SimpleNamespace(platform="cpu", device_kind="cpu")
    name = f"cpu-Intel-Xeon-Platinum-8488C-2-cores-jax{jax.__version__}.json"
    assert autotune_cache.cache_file(cpu).name == name


def test_the_environment_switches_autotuning_and_names_bad_values(monkeypatch):
    monkeypatch.setenv("Q4LAB_AUTOTUNE", "yes")
    with pytest.raises(
        ValueError, match=r"Q4LAB_AUTOTUNE='yes' is not a setting; allowed: 0: .*1: "
    ):
        autotune_cache.configure()
    try:
        monkeypatch.setenv("Q4LAB_AUTOTUNE", "1")
        autotune_cache.configure()
        assert isinstance(autotune.current(), autotune_cache.DeviceTable)
        with autotune.use(None):  # a block's choice wins over the process's
            assert autotune.current() is None
        for off in ("0", ""):
            autotune.install({})
            monkeypatch.setenv("Q4LAB_AUTOTUNE", off)
            autotune_cache.configure()
            assert autotune.current() is None
    finally:
        autotune.install(None)


def test_importing_q4lab_with_a_bad_setting_names_the_variable():
    env = {**os.environ, "Q4LAB_AUTOTUNE": "on", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", "import q4lab"], env=env, capture_output=True)
    assert run.returncode != 0
    assert b"Q4LAB_AUTOTUNE='on' is not a setting; allowed: 0" in run.stderr


def test_dispatch_check_takes_the_rules_pick_with_a_table_in_use(quick, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "dispatch_check", BENCHMARKS / "dispatch_check.py"
    )
    dispatch_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dispatch_check)
    qt = _weight(GROUPED)
    kept = {"ms": {"reference": 1.0, "blocked": 100.0}, "rejected": {}}  # auto would run reference
    table = {autotune.key(qt, 2, w4a4=False, dtype=jnp.float32): {"impl": "reference", **kept}}
    with autotune.use(table):
        assert choose(qt, 2) == "reference"
        row = dispatch_check.check_call(qt, 2, w4a4=False, dtype=jnp.float32, seconds=0.0)
    assert row["rules"] == "blocked" and row["tune s"] > 0
    assert [path.split()[0] for path in row["paths (ms)"].split(", ")] == ["reference", "blocked"]
