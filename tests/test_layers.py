"""The package's dependencies point one way (README "Layout"): every import of every module, at the
top or inside a function, goes to its own layer or one below, and there is no import circle."""
import ast
from pathlib import Path

import cm_trancaf

PACKAGE = Path(cm_trancaf.__file__).parent
# bottom to top; a module may import from its own layer and those below it
LAYERS = [
    {"utils"},
    {"config"},
    {"data.io", "data.datasets", "data.preprocess", "data.phantom", "data.pipeline", "losses",
     "metrics", "reporting", "checkpoint", "models.blocks", "models.localizer", "models.maunet",
     "models.scn", "models.mtn"},
    {"inference"},
    {"train.loop", "train.scale", "train.seg", "train.mtn"},
    {"predict", "translate", "export"},
    {"demo", "experiments.cohorts", "experiments.report", "experiments.runner",
     "experiments.command", "plots", "cli"},
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    """Package modules imported by ``path`` (relative or absolute, anywhere in the file)."""
    name = _module_name(path)
    package = name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
            elif (node.module or "").startswith("cm_trancaf"):
                base, node_module = [], node.module[len("cm_trancaf"):].lstrip(".")
                node = ast.ImportFrom(module=node_module or None, names=node.names, level=1)
            else:
                continue
            target = base + (node.module.split(".") if node.module else [])
            for alias in node.names:       # `from . import plots` imports a module
                full = ".".join(target + [alias.name])
                out.add(full if full in LAYER else ".".join(target))
        elif isinstance(node, ast.Import):
            out |= {a.name[len("cm_trancaf."):] for a in node.names
                    if a.name.startswith("cm_trancaf.")}
    return {m for m in out if m and m != name and m in LAYER}


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
# a package's __init__ only re-exports its modules (checked: it imports nothing else)
for init in PACKAGE.rglob("__init__.py"):
    inside = ".".join(init.parent.relative_to(PACKAGE).parts)
    assert all(m.startswith(inside + ".") for m in _imports(init) if inside), init


def test_every_module_has_a_layer():
    assert set(GRAPH) == set(LAYER)


def test_no_module_imports_from_a_layer_above_it():
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                    if LAYER[t] > LAYER[m])
    assert upward == []
    # the two the README names: inference below training, training below predict
    assert not any(t.startswith("train.") for t in GRAPH["inference"])
    assert not {"predict", "translate", "export"} & set().union(
        *(GRAPH[m] for m in GRAPH if m.startswith("train.")))


def test_no_import_circle():
    def visit(m, stack):
        assert m not in stack, " -> ".join(stack + [m])
        for t in GRAPH[m]:
            visit(t, stack + [m])
    for m in GRAPH:
        visit(m, [])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The parser is not blind: a function-level ``from ..predict import x`` in train/ is found."""
    f = tmp_path / "train" / "bad.py"
    f.parent.mkdir()
    f.write_text("def f():\n    from ..predict import predict_files\n    from . import loop\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        assert _imports(f) == {"predict", "train.loop"}
    finally:
        PACKAGE = saved
