"""Flax models used by the tasks."""

from q4lab.models.classifiers import CNN1D, MLP

__all__ = ["CNN1D", "MLP"]
