"""Datasets that need no network."""

from q4lab.data.splits import Splits, digits, mnist1d

__all__ = ["Splits", "digits", "mnist1d"]
