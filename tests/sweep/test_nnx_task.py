"""A task of one's own whose model is an NNX instance: swept from an experiment file and saved
with its task name, like a Linen task's."""

import jax
import numpy as np
import pytest
from flax import nnx
from user_models import UserNNX  # pytest puts tests/ on the path

from q4lab import load, quantize_model
from q4lab.core import QuantSpec
from q4lab.recipe import Recipe, Rule
from q4lab.sweep import load_experiment, run_experiment
from q4lab.tasks import Task, get_task, register_task

X = np.asarray(jax.random.normal(jax.random.key(0), (48, 10, 4)), np.float32)
Y = np.arange(48) % 5


class NNXTask(Task):
    name, metric = "test-nnx-task", "agreement"

    @property
    def model(self):
        return UserNNX(nnx.Rngs(0))  # a fresh instance per call, as a task may build it

    def baseline(self, seed):
        return nnx.to_pure_dict(nnx.state(self.model))

    def calibration_inputs(self, seed):
        return X[:16]

    def test_inputs(self, seed):
        return X[16:]

    def metrics(self, forward, fp_forward, seed):
        same = np.argmax(forward(X[16:]), -1) == np.argmax(fp_forward(X[16:]), -1)
        return {"agreement": float(np.mean(same)), "fp_agreement": 1.0}


register_task("test-nnx-task")(NNXTask)


def test_an_nnx_task_sweeps_and_saves_with_its_name(tmp_path):
    """The sweep's check of its points built the model with Linen's ``init`` (AttributeError on
    an NNX instance), and ``save(task=...)`` refused every NNX model as not the task's own."""
    path = tmp_path / "nnx.py"
    path.write_text(
        "from q4lab.sweep import Sweep\n"
        "sweep = Sweep(name='nnx', grid={'task': ['test-nnx-task'], 'bits': [4, 8], "
        "'quantizer': ['gptq']})\n"
    )
    table = run_experiment(load_experiment(path), tmp_path / "results", progress=False)
    assert sorted(table["bits"]) == [4, 8] and table["score"].notna().all()

    task = get_task("test-nnx-task")
    recipe = Recipe((Rule(weight=QuantSpec(group_size=4)),))
    qm = quantize_model(task.model, task.baseline(0), recipe, sample_input=X[:4])
    loaded = load(qm.save(tmp_path / "saved", task="test-nnx-task"))  # no model: the task's
    np.testing.assert_array_equal(loaded.apply(X[:4]), qm.apply(X[:4]))
    other = UserNNX(nnx.Rngs(0))
    other.activation = "tanh"  # a setting, not a weight: another model of the same shapes
    qm = quantize_model(other, None, recipe, sample_input=X[:4])
    with pytest.raises(ValueError, match="the model is not that task's model"):
        qm.save(tmp_path / "other", task="test-nnx-task")
