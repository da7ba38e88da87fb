"""Which of the project's source files a module runs: what the served model bundles as its code.

:func:`closure` follows a module's imports transitively (imports inside functions count too:
they run). It answers two questions with one rule: the files the pyfunc carries as
``code_paths`` (:mod:`training.tracking.pyfunc`), and, in the tests, the code each DVC stage
must list in its ``deps``. Plain Python (``ast``): no MLflow import.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Iterator

PACKAGES = ("vidseq", "pipeline", "training")
"""The project's top-level packages; imports of anything else are third-party."""

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The folder holding the packages (the repository root in a checkout)."""


def module_file(module: str, root: str = ROOT) -> str | None:
    """The file of a project module (``training.data`` -> ``training/data.py``), or None."""
    base = os.path.join(root, *module.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def imported_modules(path: str, module: str, *, top_level_only: bool = False) -> set[str]:
    """The modules that the file ``path`` (module ``module``) imports, project or not.

    ``from a import b`` yields ``a.b`` where that is a module, else ``a``. With
    ``top_level_only``, imports inside functions and classes are left out.
    """
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk(tree, into_functions=not top_level_only):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if module_file(child) else base)
    return found


def _walk(node: ast.AST, *, into_functions: bool) -> Iterator[ast.AST]:
    """Every node under ``node``; without ``into_functions``, function bodies are left out."""
    for child in ast.iter_child_nodes(node):
        if not into_functions and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield child
        yield from _walk(child, into_functions=into_functions)


def closure(modules: Iterable[str], root: str = ROOT) -> dict[str, str]:
    """Every project module that importing ``modules`` runs (packages' ``__init__`` included).

    Returns:
        ``{module name: file path}``.
    """
    seen: dict[str, str] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        if parts[0] not in PACKAGES or name in seen:
            continue
        for depth in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append(".".join(parts[:depth]))
        path = module_file(name, root)
        if path is None:
            continue
        seen[name] = path
        todo.extend(imported_modules(path, name))
    return seen
