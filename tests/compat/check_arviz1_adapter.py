"""Manual check of the ArviZ 1.x branch of ``pyro_sdlgm.analysis.posterior.to_inference_data``.

CI runs Python 3.11, whose newest ArviZ is 0.23, so this is not collected by pytest. Run it
with an ArviZ 1.x environment (Python >= 3.12, ``pip install "arviz>=1" numpy``)::

    python tests/compat/check_arviz1_adapter.py

It loads only the adapter functions (no torch or Pyro needed) and builds the same groups
``SDLGM.posterior`` builds. Last run: ArviZ 1.3.0, Python 3.12.1.
"""
import ast
import warnings
from pathlib import Path

import numpy as np

src = open(str(Path(__file__).resolve().parents[2] / "pyro_sdlgm" / "analysis" / "posterior.py")).read()
tree = ast.parse(src)
wanted = {"import_arviz", "arviz_major_version", "to_inference_data", "load_inference_data", "group"}
ns = {"warnings": warnings, "Mapping": dict, "Any": object, "MARGINALS_GROUP": "marginals", "np": np,
      "optional_import": lambda name, feature: __import__(name)}
for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name in wanted:
        exec(compile(ast.Module([node], []), "posterior.py", "exec"), ns)
import arviz
print("arviz", arviz.__version__, "major", ns["arviz_major_version"]())
n, S = 4, 6
obj = ns["to_inference_data"](
    {"sparsity": np.ones((1, S, n), np.int64), "nnz": np.ones((1, S, n), np.int64)},
    {"sparsity_probs": np.full((n, 3), 1 / 3), "inclusion_probs": np.zeros((n, 5))},
    {"sparsity": ["obs"], "nnz": ["obs"], "sparsity_probs": ["obs", "level"], "inclusion_probs": ["obs", "dim"], "x": ["obs", "feature"]},
    {"obs": np.arange(n), "level": np.array([1, 2, 3]), "dim": np.arange(5), "feature": np.arange(2)},
    posterior_predictive={"x": np.zeros((1, S, n, 2))}, observed_data={"x": np.zeros((n, 2))}, attrs={"seed": 0})
assert type(obj).__name__ == "DataTree", type(obj)
assert sorted(obj.children) == ["marginals", "observed_data", "posterior", "posterior_predictive"]
assert ns["group"](obj, "marginals")["sparsity_probs"].dims == ("obs", "level")
assert ns["group"](obj, "posterior")["sparsity"].dims == ("chain", "draw", "obs")
assert obj["posterior"].attrs["seed"] == 0
assert arviz.summary(obj, var_names=["sparsity"], kind="stats").shape[0] == n
import tempfile

with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "p.nc"
    obj.to_netcdf(path)
    back = ns["load_inference_data"](path)
    assert sorted(back.children) == sorted(obj.children)
    np.testing.assert_array_equal(ns["group"](back, "marginals")["sparsity_probs"].values, np.full((n, 3), 1 / 3))
print("ArviZ", arviz.__version__, "adapter OK")
