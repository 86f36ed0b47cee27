"""The package's import graph: no circle (lazy imports inside functions count), and the layers point downwards."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"ra3_lightning": ROOT / "ra3_lightning", "ra3_lightning.callbacks": ROOT / "callbacks"}


def modules() -> dict[str, Path]:
    """Every module of the installed package by dotted name (``callbacks/`` installs as ``ra3_lightning.callbacks``)."""
    out = {}
    for package, base in SOURCES.items():
        for path in base.rglob("*.py"):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports anywhere (top level, in functions; not under ``TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }  # fmt: skip
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ra3_lightning"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {name for name in out if name in known}


def graph() -> dict[str, set[str]]:
    """Module -> modules it imports, without package ``__init__`` files (they only re-export)."""
    known = modules()
    packages = {name for name, path in known.items() if path.name == "__init__.py"}
    return {
        name: {d for d in imports(path, known) if d not in packages and d != name}
        for name, path in known.items()
        if name not in packages
    }


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    """A chain of imports from ``start`` back to itself, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, chain = stack.pop()
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                return [*chain, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*chain, nxt]))
    return None


def test_cycle_finder_by_hand():
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle():
    edges = graph()
    assert len(edges) > 40, "the graph should cover the whole package"
    circles = [c for c in (cycle_from(name, edges) for name in sorted(edges)) if c]
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_modules_and_data_do_not_import_callbacks():
    """The EMScheduler callback hands its schedule down; nothing below it imports the callback to find it."""
    for name, deps in graph().items():
        if name.startswith(("ra3_lightning.modules.", "ra3_lightning.data.", "ra3_lightning.em_schedule")):
            assert not {d for d in deps if d.startswith("ra3_lightning.callbacks")}, name


ESTEP_ROLES = ["format", "text", "vocab", "layout", "engines", "scoring", "config", "sampler", "core", "annotation"]


def test_estep_files_depend_only_on_the_roles_above_them():
    """``ra3_lightning.estep`` is layered in the order its ``__init__`` lists, and knows nothing of Lightning."""
    assert sorted(p.stem for p in (ROOT / "ra3_lightning" / "estep").glob("[!_]*.py")) == sorted(ESTEP_ROLES)
    edges = graph()
    for i, role in enumerate(ESTEP_ROLES):
        deps = edges[f"ra3_lightning.estep.{role}"]
        below = {d for d in deps if d.startswith("ra3_lightning.estep.") and d.split(".")[2] not in ESTEP_ROLES[:i]}
        assert not below, f"estep.{role} imports {below}, which come after it"
        assert not {d for d in deps if d.startswith(("ra3_lightning.modules", "ra3_lightning.callbacks"))}, role


def imported_names(path: Path) -> set[str]:
    """Every absolute module (and ``module.name``) that ``path`` imports, of any package."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


def test_experiments_use_only_public_names_and_the_package_never_imports_them():
    """``experiments/`` composes the library from outside: public names only (no ``_``-prefixed module or name), and
    nothing in the package points back at it."""
    scripts = sorted((ROOT / "experiments").glob("*.py"))
    assert scripts, "experiments/ should hold the ablation and table scripts"
    for script in scripts:
        ours = {n for n in imported_names(script) if n.split(".")[0] == "ra3_lightning"}
        private = {n for n in ours if any(part.startswith("_") for part in n.split("."))}
        assert not private, f"{script.name} imports private names: {private}"
    for name, path in modules().items():
        assert not {n for n in imported_names(path) if n.split(".")[0] == "experiments"}, name


def test_evaluation_knows_no_task_world():
    """The modules, the evaluation component and its diagnostics take a task's ground truth (skills, their comment
    phrases) from the task itself: none of them imports the synthetic world's skill library."""
    world = {"ra3_lightning.data.skills", "ra3_lightning.data.synthetic"}
    for name, path in modules().items():
        if name.startswith(("ra3_lightning.modules", "ra3_lightning.evaluation")) or name.endswith("eval_diagnostics"):
            assert not {n for n in imported_names(path) if n in world or n.rpartition(".")[0] in world}, name
