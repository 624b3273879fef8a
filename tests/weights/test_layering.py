"""retinadet.weights imports flow one way: every module imports, at module top, only modules of its own
or a lower layer, without a cycle, and never the packages built on it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "retinadet" / "weights"
# Bottom to top. A new module must be placed here, so that its layer is a decision.
LAYERS = [
    {"format", "keymaps"},
    {"unpickler", "torch_io", "checkpoint", "safetensors_io"},
    {"identify"},
    {"fit", "finetune", "seed", "torchvision_import"},
    {"resolve"},
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}
UPWARD = ("retinadet.engine", "retinadet.detector", "retinadet.cli", "retinadet.explain", "retinadet.export")
MAX_LINES = 400


def internal_imports(source: str) -> list[tuple[str, bool]]:
    """``(imported retinadet name, sits at module top)`` for every import of the package in ``source``."""
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # Relative imports are read as written from inside retinadet/weights/.
            base = ["retinadet.weights", "retinadet"][node.level - 1] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names = [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(name, id(node) in top) for name in names if name.split(".")[0] == "retinadet"]
    return found


def weights_module(name: str) -> str:
    """The submodule of retinadet.weights that ``name`` lives in ('' for the package itself)."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[2] in RANK else ""


def _modules() -> dict[str, list[tuple[str, bool]]]:
    return {path.stem: internal_imports(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.glob("*.py"))}


def test_the_checker_sees_nested_upward_and_relative_imports():
    source = ("from retinadet.errors import CheckpointError\nfrom .format import FORMAT\n"
              "def f():\n    from retinadet.engine.train import train\n")
    assert internal_imports(source) == [
        ("retinadet.errors.CheckpointError", True), ("retinadet.weights.format.FORMAT", True), ("retinadet.engine.train.train", False),
    ]
    assert weights_module("retinadet.weights.format.FORMAT") == "format" and weights_module("retinadet.weights.load_checkpoint") == ""


def test_every_module_has_a_layer_and_stays_short():
    modules = set(_modules()) - {"__init__"}
    assert modules == set(RANK), f"place new modules in LAYERS: {sorted(modules ^ set(RANK))}"
    long = {path.name: n for path in PACKAGE.glob("*.py") if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_internal_imports_sit_at_module_top_and_never_go_upward():
    for module, imports in _modules().items():
        for name, at_top in imports:
            assert at_top, f"retinadet/weights/{module}.py imports {name} inside a function or block"
            assert not name.startswith(UPWARD), f"retinadet/weights/{module}.py imports {name}, which is built on retinadet.weights"


def test_weights_modules_import_only_their_layer_or_below_without_cycles():
    graph = {}
    for module, imports in _modules().items():
        if module == "__init__":
            continue
        targets = {weights_module(name) for name, _ in imports if name == "retinadet.weights" or name.startswith("retinadet.weights.")}
        assert "" not in targets, f"retinadet/weights/{module}.py imports the package itself, which imports every module"
        higher = sorted(t for t in targets if RANK[t] > RANK[module])
        assert not higher, f"retinadet/weights/{module}.py (layer {RANK[module]}) imports higher layer(s): {higher}"
        graph[module] = targets - {module}
    done, path = set(), []

    def visit(module):
        assert module not in path, f"import cycle: {' -> '.join(path[path.index(module):] + [module])}"
        if module not in done:
            path.append(module)
            for target in graph[module]:
                visit(target)
            path.pop()
            done.add(module)

    for module in graph:
        visit(module)
