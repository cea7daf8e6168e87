"""The package's layers: each subpackage imports only from the layers below it, and the lazy
package reaches every subpackage and submodule."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from pyro_sdlgm._lazy import submodule_getattr

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_sdlgm"

# a layer may import from itself and from the layers listed for it (and the top-level modules below)
BASE = {"exceptions", "_lazy", "_optional", "plugins"}
ALLOWED = {
    "model": BASE,
    "config": BASE | {"model"},
    "data": BASE | {"config"},
    "inference": BASE | {"config", "data", "model"},
    "analysis": BASE | {"model"},
    "estimators": BASE | {"config", "data", "model", "inference", "analysis"},
    "app": BASE | {"config", "data", "model", "inference", "analysis", "estimators"},
}


def imported_layers(path: Path) -> set[str]:
    """The first component after ``pyro_sdlgm`` of every import in ``path`` (functions' too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyro_sdlgm"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from pyro_sdlgm import X: the public names live in the estimators and below
                found.update(alias.name for alias in node.names if alias.name in ALLOWED)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pyro_sdlgm."))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_from_the_layers_below(layer):
    files = sorted((PACKAGE / layer).rglob("*.py")) if (PACKAGE / layer).is_dir() else [PACKAGE / f"{layer}.py"]
    assert files
    wrong = {str(f.relative_to(PACKAGE)): sorted(imported_layers(f) - ALLOWED[layer] - {layer}) for f in files}
    assert not {f: layers for f, layers in wrong.items() if layers}


def test_every_module_belongs_to_a_layer():
    top = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert top - {"__init__", "__main__"} == set(ALLOWED) | BASE


def test_the_lazy_package_reaches_subpackages_and_submodules():
    code = ("import sys, pyro_sdlgm; assert 'torch' not in sys.modules; "
            "assert pyro_sdlgm.analysis.posterior.sparsity_inference_data; "
            "assert pyro_sdlgm.estimators.base.Estimator\n"
            "try:\n    pyro_sdlgm.analysis.no_such_module\nexcept AttributeError as err:\n"
            "    assert 'no_such_module' in str(err)\nelse:\n    raise SystemExit('no AttributeError')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_submodule_whose_dependency_is_missing_names_that_dependency(tmp_path, monkeypatch):
    package = tmp_path / "lazy_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "needs_extra.py").write_text("import a_package_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_package_that_is_not_installed"):
        submodule_getattr("lazy_pkg")("needs_extra")
    with pytest.raises(AttributeError, match="nothing_here"):
        submodule_getattr("lazy_pkg")("nothing_here")


def test_a_missing_extra_is_named_with_its_install_command(monkeypatch):
    from pyro_sdlgm.data.multilabel import load_yeast
    from pyro_sdlgm.exceptions import MissingDependencyError

    monkeypatch.setitem(sys.modules, "river", None)  # as if river were not installed
    monkeypatch.setitem(sys.modules, "river.datasets", None)
    with pytest.raises(MissingDependencyError, match=r"the Yeast data set needs the package 'river'.*"
                                                     r'pip install "pyro-sdlgm\[data\]"'):
        load_yeast()
