"""The module layout keeps its arrows pointing one way: serving never reaches training code.

A server image should not need TensorFlow Recommenders, the models or the data readers, and a
change to training should never break a running server. The imports are read from the source
(``ast``, nothing executed), followed through the project's own modules, and a failure shows the
chain of imports that reached the forbidden module.
"""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = "tfrs_pipeline"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / PACKAGE
TRAINING_CODE = (f"{PACKAGE}.models", f"{PACKAGE}.pipelines", f"{PACKAGE}.train", f"{PACKAGE}.data",
                 "tensorflow_recommenders")
SERVING_MODULES = sorted(
    [f"{PACKAGE}.serving." + path.stem for path in (PACKAGE_DIR / "serving").glob("*.py") if path.stem != "__init__"]
    + [f"{PACKAGE}.serving", f"{PACKAGE}.recommend"])


def module_path(module: str) -> pathlib.Path | None:
    """The source file of a project module (``a/b.py`` or ``a/b/__init__.py``); None outside the project."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    folder = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for candidate in (folder.with_name(folder.name + ".py"), folder / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(module: str) -> set[str]:
    """Every module ``module``'s source imports, anywhere in the file, with the packages that load on the way.

    ``from package import name`` counts ``package.name`` when that is a module of the project, and
    importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so those count too.
    """
    path = module_path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if module_path(f"{base}.{alias.name}"))
    return {".".join(name.split(".")[:depth]) for name in found for depth in range(1, name.count(".") + 2)}


def import_chains(start: str) -> dict[str, list[str]]:
    """Each module reachable from ``start`` through project modules -> the chain of imports that first reached it."""
    chains = {start: [start]}
    pending = [start]
    while pending:
        module = pending.pop()
        for imported in sorted(imported_modules(module)):
            if imported not in chains:
                chains[imported] = chains[module] + [imported]
                if module_path(imported):
                    pending.append(imported)
    return chains


def forbidden_reached(start: str, forbidden: tuple[str, ...]) -> list[str]:
    return [" -> ".join(chain) for module, chain in sorted(import_chains(start).items())
            if any(module == name or module.startswith(name + ".") for name in forbidden)]


def test_the_walk_follows_project_imports_and_sees_forbidden_ones():
    """The checker itself: the training command does reach the models (else the tests below prove nothing)."""
    chains = import_chains(f"{PACKAGE}.train")
    assert f"{PACKAGE}.pipelines.two_stage" in chains and f"{PACKAGE}.models.query_tower" in chains
    assert forbidden_reached(f"{PACKAGE}.pipelines.session", ("tensorflow_recommenders",))
    assert f"{PACKAGE}.serving.client" in SERVING_MODULES and f"{PACKAGE}.recommend" in SERVING_MODULES


@pytest.mark.parametrize("module", SERVING_MODULES)
def test_serving_never_imports_training_code(module):
    assert forbidden_reached(module, TRAINING_CODE) == []


def test_the_report_does_not_import_the_pipelines():
    """The pipelines write the report; the report reading a pipeline back made an import cycle."""
    assert forbidden_reached(f"{PACKAGE}.report", (f"{PACKAGE}.pipelines",)) == []


def test_a_running_server_and_client_load_no_training_code():
    """What actually loads, in a fresh process: catches imports no source scan sees (plugins, importlib)."""
    check = ("import sys, tfrs_pipeline.serving.server, tfrs_pipeline.recommend; "
             f"bad = sorted(m for m in sys.modules if m.startswith({TRAINING_CODE!r})); "
             "print(bad); sys.exit(1 if bad else 0)")
    finished = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
