"""The layers show in the folders: vidseq <- pipeline <- training core <- training.tracking <- stage mains.

Checked statically (every import of every project module, found by ``training.tracking.bundle``) and in a
fresh interpreter (``import training.model, training.data`` loads neither MLflow nor Beam);
``dvc.yaml``'s code deps are checked against what each stage's entry point really runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from training.tracking import bundle as code

REPO = code.ROOT
ENTRY_POINTS = {
    "pipeline.__main__", "pipeline.build", "pipeline.inspect", "pipeline.listing", "pipeline.synth",
    "training.train", "training.evaluate", "training.register", "training.predict", "training.summary",
    "training.serve", "training.ui",
}  # fmt: skip
LAYER_NAMES = ("vidseq", "pipeline", "training core", "training.tracking", "entry points")


def layer(module: str) -> int:
    if module in ENTRY_POINTS:
        return 4
    if module.startswith("training.tracking"):
        return 3
    for number, package in enumerate(("vidseq", "pipeline", "training")):
        if module.split(".")[0] == package:
            return number
    raise AssertionError(f"{module} is in no layer")


def project_modules() -> dict[str, str]:
    found = {}
    for package in code.PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    found[module] = path
    return found


MODULES = project_modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_upward(module):
    own = layer(module)
    for imported in code.imported_modules(MODULES[module], module):
        if imported.split(".")[0] in code.PACKAGES:
            assert layer(imported) <= own, (
                f"{module} ({LAYER_NAMES[own]}) imports {imported} ({LAYER_NAMES[layer(imported)]})"
            )


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) < 3 and m not in ENTRY_POINTS))
def test_lower_layers_never_import_mlflow_and_the_core_never_imports_beam_at_module_level(module):
    everywhere = code.imported_modules(MODULES[module], module)
    top = code.imported_modules(MODULES[module], module, top_level_only=True)
    assert not {m for m in everywhere if m.split(".")[0] == "mlflow"}, f"{module} imports MLflow"
    if layer(module) <= 1:  # the foundation and pipeline: no TensorFlow at module level
        assert not {m for m in top if m.split(".")[0] in ("tensorflow", "keras")}, f"{module} imports TensorFlow"
    if layer(module) != 1:  # only pipeline is Beam's
        assert not {m for m in top if m.split(".")[0] == "apache_beam"}, f"{module} imports Beam"


def test_the_keras_core_loads_neither_mlflow_nor_beam():
    script = (
        "import sys, training.model, training.data, training.classifier\n"
        "print(sorted(m for m in ('mlflow', 'apache_beam') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("package", [m for m in MODULES if MODULES[m].endswith("__init__.py")])
def test_each_package_says_its_one_job(package):
    import ast

    with open(MODULES[package], encoding="utf-8") as handle:
        docstring = ast.get_docstring(ast.parse(handle.read()))
    assert docstring and docstring.splitlines()[0].strip(), f"{package} has no docstring"


def _stage_code(stage: dict) -> tuple[set[str], list[str]]:
    """The project files a stage's ``python -m`` command runs, and its code deps."""
    command = stage["cmd"].split()
    module = command[command.index("-m") + 1]
    if code.module_file(module).endswith("__init__.py"):  # python -m PACKAGE runs PACKAGE.__main__
        module += ".__main__"
    runs = {os.path.relpath(p, REPO) for p in code.closure([module]).values()}
    code_deps = [d.rstrip("/") for d in stage.get("deps", []) if d.split("/")[0] in code.PACKAGES]
    return runs, code_deps


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in deps)


def _stages() -> dict[str, dict]:
    """The stages of ``dvc.yaml`` and of ``data/dvc.yaml`` (the demo's synth, whose paths are from the root: wdir ..)."""
    stages = {}
    for name in ("dvc.yaml", "data/dvc.yaml"):
        with open(os.path.join(REPO, name), encoding="utf-8") as handle:
            for stage, body in yaml.safe_load(handle)["stages"].items():
                assert os.path.normpath(os.path.join(os.path.dirname(name), body.get("wdir", "."))) == ".", stage
                stages[stage] = body
    return stages


STAGES = _stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_depends_on_the_code_it_runs_and_no_more(name):
    runs, deps = _stage_code(STAGES[name])
    missing = sorted(p for p in runs if not _covered(p, deps))
    assert not missing, f"stage {name} runs {missing} but dvc.yaml does not list them in its deps"
    for dep in deps:
        full = os.path.join(REPO, dep)
        files = (
            [os.path.relpath(os.path.join(f, n), REPO) for f, _, ns in os.walk(full) for n in ns if n.endswith(".py")]
            if os.path.isdir(full)
            else [dep]
        )
        extra = sorted(set(files) - runs)
        assert not extra, f"stage {name} depends on {dep}, but does not run {extra}"
