"""Sweeps: experiment files -> validated points -> resumable runs -> a results table."""

from q4lab.sweep.experiment import Experiment, load_experiment
from q4lab.sweep.fields import FIELDS, Point, config_hash, recipe_of
from q4lab.sweep.runner import EXECUTORS, evaluate_point, run_experiment
from q4lab.sweep.spec import Sweep
from q4lab.sweep.store import ResultsStore
from q4lab.sweep.tracking import WandbSettings

__all__ = [
    "EXECUTORS",
    "FIELDS",
    "Experiment",
    "Point",
    "ResultsStore",
    "Sweep",
    "WandbSettings",
    "config_hash",
    "evaluate_point",
    "load_experiment",
    "recipe_of",
    "run_experiment",
]
