"""The import graph holds the layering: every import inside the package points down a
layer (or stays within its own layer), and no module imports itself back through others.
Imports anywhere in a module count, also those inside functions."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "allnc"

# bottom to top; a module may import its own layer and the layers below
LAYERS = [
    {"allnc", "errors", "registry", "dist", "rundir", "config_io", "plugins"},  # the ground floor
    {"data"},
    {"models"},
    {"losses"},
    {"metrics"},
    {"methods"},
    {"config", "compose"},  # the default tree needs every method's registered section
    {"engine"},
    {"report", "grid"},
    {"cli", "__main__", "api"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    p = SRC.parent.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        mod = _module_name(path)
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("allnc"):
                    continue
                for a in node.names:  # `from . import x` imports the module x
                    sub = f"{target}.{a.name}"
                    targets.add(sub if _is_module(sub) else target)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("allnc"))
        graph[mod] = {t for t in targets if t != mod}
    return graph


def layer(mod: str) -> int:
    parts = mod.split(".")
    return LAYER_OF[parts[1] if len(parts) > 1 else "allnc"]


def test_every_module_has_a_layer():
    for mod in import_graph():
        assert (mod.split(".")[1] if "." in mod else "allnc") in LAYER_OF, f"{mod} belongs to no layer"


def test_no_import_points_up_a_layer():
    up = sorted(f"{a} -> {b}" for a, bs in import_graph().items() for b in bs if layer(b) > layer(a))
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(n) is None and n in graph:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if state.get(m) is None:
            visit(m)
