"""Tasks by name (``get_task("digits-mlp")``)."""

from q4lab.tasks import classification as _classification  # noqa: F401  (registers tasks)
from q4lab.tasks import text as _text  # noqa: F401
from q4lab.tasks.base import Task, available_tasks, cache_dir, get_task, register_task

__all__ = ["Task", "available_tasks", "cache_dir", "get_task", "register_task"]
