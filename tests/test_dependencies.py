"""`pip install .` without extras must run the README's main command: every third-party module
that q4lab imports for it comes from a base dependency of pyproject.toml or one of theirs (an
import from an extra passed CI, which installs the extras, and failed on a fresh machine)."""

import importlib.metadata as metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

# what the main command (q4lab run + q4lab plot) and `import q4lab` load
MODULES = ("q4lab", "q4lab.cli", "q4lab.sweep.runner", "q4lab.tasks", "q4lab.plots", "q4lab.report")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _with_their_dependencies(names) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requirements if "extra ==" not in r]
    return seen


_BLOCKER = """
import sys

class Uninstalled:  # what a fresh `pip install .` lacks: import fails as if it were absent
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Uninstalled())
for module in MODULES:
    __import__(module)
"""


def test_the_main_command_imports_only_base_dependencies():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    allowed = _with_their_dependencies(_name(r) for r in project["dependencies"]) | {"q4lab"}
    blocked = {
        module
        for module, dists in metadata.packages_distributions().items()
        if not any(_name(d) in allowed for d in dists)
    }
    code = f"BLOCKED = {sorted(blocked)!r}\nMODULES = {MODULES!r}\n{_BLOCKER}"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-1500:]
