"""The package's layer rules (CONVENTIONS.md: jobs -> pipelines/training -> imaging/vessels/models -> config/io),
checked on every ``import`` statement of dr_ray/ (module level and inside functions), so CI enforces them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dr_ray"

# layer -> the dr_ray layers it may import (its own always allowed). "faults" (test fault injection) and "config"
# sit at the bottom; nothing below pipelines may reach up into pipelines, report or the CLI.
ALLOWED = {
    "faults": set(),
    "config": set(),
    "io": {"config", "faults"},
    "imaging": {"config", "io"},
    "vessels": {"config", "io", "imaging"},
    "models": {"config", "io"},
    "testing": {"config", "io", "imaging", "vessels"},
    "training": {"config", "io", "imaging", "vessels", "models", "faults"},
    "report": {"config", "io", "imaging", "vessels", "models", "training"},
    "pipelines": {"config", "io", "imaging", "vessels", "models", "training", "report", "testing", "faults"},
    "cli": {"config", "io", "pipelines"},
}
# pure-array layers: no deep-learning or cluster runtime
NO_RUNTIME = {"imaging", "vessels", "config", "io", "faults"}
# known exceptions, each with its reason; the list may only shrink
KNOWN: set[tuple[str, str, str]] = set()  # the synthetic training sets are files now (dr_ray.testing.write_synthetic_set)


def _layer(path: Path, pkg: Path = PKG) -> str:
    rel = path.relative_to(pkg)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _violations(pkg: Path = PKG):
    out = set()
    for path in sorted(pkg.rglob("*.py")):
        layer = _layer(path, pkg)
        if layer in ("__init__",):
            continue
        rel = str(path.relative_to(pkg.parent))
        for mod in _imports(path):
            top = mod.split(".")
            if top[0] == "dr_ray" and len(top) > 1 and top[1] != layer:
                if top[1] not in ALLOWED.get(layer, set()):
                    out.add((layer, top[1], rel))
            elif top[0] in ("torch", "ray", "timm", "torch_geometric") and layer in NO_RUNTIME:
                out.add((layer, top[0], rel))
    return out


def test_every_layer_is_known():
    layers = {_layer(p) for p in PKG.rglob("*.py")} - {"__init__"}
    assert layers <= set(ALLOWED), sorted(layers - set(ALLOWED))


def test_imports_point_down_the_layers():
    found = _violations()
    new = sorted(found - KNOWN)
    assert not new, "imports against the layer rules (layer, imported, file): " + "; ".join(map(str, new))
    gone = sorted(KNOWN - found)
    assert not gone, f"fixed: remove from KNOWN: {gone}"


def test_the_checker_sees_a_violation(tmp_path):
    """A planted upward import (inside a function) and a torch import in imaging/ are both reported; the probe
    package lives in tmp_path, never in the source tree."""
    probe = tmp_path / "dr_ray"
    (probe / "imaging").mkdir(parents=True)
    (probe / "imaging" / "probe.py").write_text("def f():\n    from dr_ray.pipelines import runtime\n    import torch\n")
    (probe / "training").mkdir()
    (probe / "training" / "ok.py").write_text("from dr_ray.models import create_model\n")
    assert _violations(probe) == {("imaging", "pipelines", "dr_ray/imaging/probe.py"),
                                  ("imaging", "torch", "dr_ray/imaging/probe.py")}


@pytest.mark.parametrize("module", ["dr_ray.io.columns", "dr_ray.training.fusion_data"])
def test_light_modules_stay_light(module):
    """Every Ray task and actor process imports these (column names, the batch decoder): they must not pull in
    scikit-learn, timm or torch_geometric (seconds of CPU per fresh worker process)."""
    import subprocess
    import sys

    code = (f"import sys, {module}; heavy = [m for m in ('sklearn', 'timm', 'torch_geometric') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} imports {out}"


def test_cpu_task_modules_do_not_import_torch():
    """The modules ``dr-ray label``'s and the stages' CPU tasks import (decode + preprocess, graphs and biomarkers,
    commits) must not pull in torch: each task worker process would hold it (measured: ~530 MB PSS per graph
    worker with torch, bench_label_scale.py; a 16-core node runs 16 of them). Only the model actors need it."""
    import subprocess
    import sys

    mods = ("dr_ray.pipelines.label_steps, dr_ray.pipelines.preprocess, dr_ray.pipelines.vessels, "
            "dr_ray.pipelines.commit, dr_ray.pipelines.commit_stream")
    code = (f"import sys, {mods}; from dr_ray.pipelines.vessels import analyse_record, encode_vessel_prob; "
            "print(','.join(m for m in ('torch', 'timm', 'torch_geometric') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"a CPU task module imports {out}"


@pytest.mark.parametrize("package,catalog", [("dr_ray.io", True), ("dr_ray.training", False)])
def test_lazy_re_exports_are_declared_for_type_checkers(package, catalog):
    """The PEP 562 packages list the same names under ``if TYPE_CHECKING:`` as they serve lazily (py.typed ships)."""
    import importlib

    served = set(importlib.import_module("dr_ray.io.catalog").__all__) | {"catalog"} if catalog else set(
        importlib.import_module(package).__all__)
    tree = ast.parse((PKG / package.split(".", 1)[1] / "__init__.py").read_text())
    declared = {a.name for node in ast.walk(tree) if isinstance(node, ast.If)
                and getattr(node.test, "id", None) == "TYPE_CHECKING" for imp in node.body for a in imp.names}
    assert declared == served


# ------------------------------------------------------------------------------- private names stay home

# (file, home module, name): an underscore-prefixed name one dr_ray module takes from another; the set may only
# shrink (it is empty: a helper two modules share is public in its home module).
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path, pkg: Path) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str, pkg: Path) -> bool:
    parts = dotted.split(".")
    base = pkg.parent.joinpath(*parts)
    return parts[0] == pkg.name and (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file())


def _private_imports(pkg: Path = PKG):
    """(file, home module, name) for every ``from <dr_ray module> import _name`` (relative ones too) and every
    ``<alias of a dr_ray module>._name`` in a module other than that home module (module level and inside
    functions; dunder names such as ``__version__`` are not private)."""
    out = set()
    for path in sorted(pkg.rglob("*.py")):
        me = _module_name(path, pkg)
        here = me if path.name == "__init__.py" else me.rpartition(".")[0]
        rel = str(path.relative_to(pkg.parent))
        tree = ast.parse(path.read_text())
        modules = {}  # local name -> the dr_ray module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    modules[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    mod = ".".join(up + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.split(".")[0] != pkg.name:
                    continue
                for a in node.names:
                    if _private(a.name) and mod != me:
                        out.add((rel, mod, a.name))
                    if _is_module(f"{mod}.{a.name}", pkg):
                        modules[a.asname or a.name] = f"{mod}.{a.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                chain, base = [], node.value
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in modules:
                    mod = ".".join([modules[base.id], *reversed(chain)])
                    if mod != me and _is_module(mod, pkg):
                        out.add((rel, mod, node.attr))
    return out


def test_no_private_imports_across_modules():
    """A helper another module needs is public in its home module (no ``_name`` imports across modules)."""
    found = _private_imports()
    new = sorted(found - KNOWN_PRIVATE)
    assert not new, ("underscore-prefixed names imported from another dr_ray module (file, home, name); give them "
                     "a public name in their home module: " + "; ".join(map(str, new)))
    gone = sorted(KNOWN_PRIVATE - found)
    assert not gone, f"fixed: remove from KNOWN_PRIVATE: {gone}"


def test_the_private_import_checker_sees_violations(tmp_path):
    """Every way of reaching another module's private name is reported, and nothing else, on a probe package in
    tmp_path (never in the source tree)."""
    probe = tmp_path / "dr_ray"
    (probe / "a").mkdir(parents=True)
    (probe / "b").mkdir()
    for d in (probe, probe / "a", probe / "b"):
        (d / "__init__.py").write_text("")
    (probe / "a" / "helpers.py").write_text(
        "__version__ = '1'\n_x = 1\ny = 2\n\ndef f():\n    from dr_ray.a import helpers\n    return helpers._x\n")
    (probe / "a" / "rel.py").write_text("from .helpers import _x\nfrom . import helpers\nfrom .helpers import y\n")
    (probe / "b" / "inner.py").write_text(
        "def g():\n    from dr_ray.a.helpers import _x, y\n    return _x, y\n")
    (probe / "b" / "from_alias.py").write_text("from dr_ray.a import helpers as h\n\ndef g():\n    return h._x, h.y\n")
    (probe / "b" / "import_as.py").write_text("import dr_ray.a.helpers as hh\n\nv = hh._x\n")
    (probe / "b" / "dotted.py").write_text("import dr_ray.a.helpers\n\nv = dr_ray.a.helpers._x\n")
    (probe / "b" / "ok.py").write_text(
        "import os\nfrom os import _exit\nfrom dr_ray.a import helpers\nfrom dr_ray.a.helpers import __version__, y\n\n"
        "def g():\n    return os._exit, y, helpers.y, helpers.__name__\n")
    (probe / "b" / "parent.py").write_text("from ..a.helpers import _x\n")
    assert _private_imports(probe) == {
        ("dr_ray/a/rel.py", "dr_ray.a.helpers", "_x"),
        ("dr_ray/b/inner.py", "dr_ray.a.helpers", "_x"),
        ("dr_ray/b/from_alias.py", "dr_ray.a.helpers", "_x"),
        ("dr_ray/b/import_as.py", "dr_ray.a.helpers", "_x"),
        ("dr_ray/b/dotted.py", "dr_ray.a.helpers", "_x"),
        ("dr_ray/b/parent.py", "dr_ray.a.helpers", "_x"),
    }


# training/: the loop and its epochs are Ray-free; these adapters are the only modules that touch Ray
RAY_ADAPTERS = {"dr_ray/training/ray_train.py", "dr_ray/training/ray_fusion.py", "dr_ray/training/tune.py"}


def test_only_the_ray_adapters_of_training_import_ray():
    found = sorted(str(p.relative_to(PKG.parent)) for p in (PKG / "training").rglob("*.py")
                   if any(m.split(".")[0] == "ray" for m in _imports(p)))
    assert found and set(found) <= RAY_ADAPTERS, f"Ray imported outside the adapters: {sorted(set(found) - RAY_ADAPTERS)}"
