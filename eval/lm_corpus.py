"""Real English text that every Python installation carries: the corpus of ``sdl-anchor bench lm``.

``python-docs``: the Python documentation's topic pages (``pydoc_data.topics``, the text ``help("if")``
prints: prose with code, about 0.47 MB) and the docstrings of the standard library's own source files (read
with ``ast``, never imported: modules, classes and functions, several MB). People wrote it, not this project;
it installs with Python itself, so it needs no network and no apt. Its known limits: technical prose about
one programming language, with code mixed in, and its exact content follows the Python version (recorded in
results.json with a hash of the text). Documents are split into a training part and a held-out part by a hash
of their name, so both parts are fixed whatever the order of discovery.

A folder of ``.txt`` / ``.rst`` / ``.md`` files (``--corpus DIR``, e.g. Debian's python3.11-doc sources or
``fortunes``) replaces it.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

MIN_DOC_CHARS = 200  # shorter docstrings ("Return self.") add little English
TEXT_SUFFIXES = (".txt", ".rst", ".md")


@dataclass(frozen=True)
class Corpus:
    name: str
    train: list[str]
    held_out: list[str]

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for text in (*self.train, "\0", *self.held_out):
            digest.update(text.encode())
            digest.update(b"\0")
        return digest.hexdigest()

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "train_documents": len(self.train),
            "held_out_documents": len(self.held_out),
            "train_chars": sum(map(len, self.train)),
            "held_out_chars": sum(map(len, self.held_out)),
            "sha256": self.sha256(),
            "python": sys.version.split()[0],
        }


def _held_out(name: str, fraction: float) -> bool:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def _stdlib_docstrings() -> dict[str, str]:
    """``{"module:qualname": docstring}`` of the standard library's source files, parsed, not imported."""
    root = Path(sysconfig.get_paths()["stdlib"])
    documents: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in ("site-packages", "test", "idlelib", "lib2to3") or "tests" in relative.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)))]
        for node in nodes:
            text = ast.get_docstring(node)
            if text and len(text) >= MIN_DOC_CHARS:
                documents[f"{relative}:{getattr(node, 'name', '')}:{getattr(node, 'lineno', 0)}"] = text
    return documents


def python_docs_corpus(held_out_fraction: float = 0.1) -> Corpus:
    """The ``python-docs`` corpus (module docstring)."""
    from pydoc_data.topics import topics

    documents = {f"topic:{name}": text for name, text in topics.items()} | _stdlib_docstrings()
    return _split("python-docs", documents, held_out_fraction)


def folder_corpus(folder: Path, held_out_fraction: float = 0.1) -> Corpus:
    """Every text file under ``folder`` as one document."""
    if not folder.is_dir():
        raise ValueError(f"--corpus {folder} is not a folder of .txt / .rst / .md files")
    documents = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix in TEXT_SUFFIXES and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                documents[str(path.relative_to(folder))] = text
    if len(documents) < 2:
        raise ValueError(f"--corpus {folder} holds {len(documents)} text files; it needs at least 2")
    return _split(f"folder:{folder.name}", documents, held_out_fraction)


def _split(name: str, documents: dict[str, str], fraction: float) -> Corpus:
    train = [text for key, text in sorted(documents.items()) if not _held_out(key, fraction)]
    held_out = [text for key, text in sorted(documents.items()) if _held_out(key, fraction)]
    if not train or not held_out:
        raise ValueError(f"corpus {name}: the split left an empty part; give more documents")
    return Corpus(name, train, held_out)
