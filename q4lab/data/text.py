"""Text that needs no network: the running Python's own standard library.

- `docstring_sentences`: sentences from the docstrings of a pinned list of standard-library
  modules (English prose written by many authors), for the sentence-embedding task.
- `stdlib_source`: the bytes of the standard library's top-level ``*.py`` files, for the
  byte-level language model.

Both depend on the Python version; `provenance` strings record it with a checksum of the text,
so cached baselines and results name exactly what they were computed on.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import platform
import re
import sysconfig
from pathlib import Path

DOC_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections",
    "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email.message", "enum", "fractions", "ftplib", "functools", "gettext",
    "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser", "http.client", "http.server",
    "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "math",
    "mimetypes", "multiprocessing", "operator", "optparse", "os", "pathlib", "pickle", "pprint",
    "queue", "random", "re", "sched", "secrets", "selectors", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "struct", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback", "types",
    "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)  # fmt: skip
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-/.!?]+[.!?]$")


def _docstrings(module_name: str):
    module = importlib.import_module(module_name)
    yield inspect.getdoc(module)
    for _, obj in sorted(vars(module).items()):
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield inspect.getdoc(obj)
        if inspect.isclass(obj):
            for _, member in sorted(vars(obj).items()):
                if inspect.isfunction(member):
                    yield inspect.getdoc(member)


@functools.cache
def docstring_sentences(min_chars: int = 30, max_chars: int = 200) -> tuple[str, ...]:
    """Distinct prose sentences from the docstrings of `DOC_MODULES`, sorted."""
    found: set[str] = set()
    for name in DOC_MODULES:
        try:
            docs = list(_docstrings(name))
        except ImportError:  # a module this build of Python lacks
            continue
        for doc in filter(None, docs):
            for paragraph in doc.split("\n\n"):
                if ">>>" in paragraph or "::" in paragraph:
                    continue
                text = " ".join(paragraph.split())
                for sentence in _SENTENCE_END.split(text):
                    if min_chars <= len(sentence) <= max_chars and _PROSE.match(sentence):
                        found.add(sentence)
    return tuple(sorted(found))


@functools.cache
def stdlib_source(max_bytes: int = 4_000_000) -> bytes:
    """The first ``max_bytes`` of the standard library's top-level ``*.py`` files, sorted by
    name and joined by newlines (ASCII and UTF-8 source as stored)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for path in sorted(root.glob("*.py")):
        out += path.read_bytes() + b"\n"
        if len(out) >= max_bytes:
            break
    return bytes(out[:max_bytes])


def provenance(kind: str, data: bytes | tuple[str, ...]) -> str:
    """``"<kind> of CPython <version>, <size>, sha256 <digest>"``."""
    raw = data if isinstance(data, bytes) else "\n".join(data).encode()
    size = f"{len(raw)} bytes" if isinstance(data, bytes) else f"{len(data)} sentences"
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f"{kind} of CPython {platform.python_version()}, {size}, sha256 {digest}"
