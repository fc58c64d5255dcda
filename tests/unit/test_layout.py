"""The layout is the architecture: these rules fail the build when an import breaks it.

- `jobs/` (training) and `serving/` (the Serve app) never import each other, and the shared
  library imports neither: they meet in the registry, in `state_uri` and in `shipyard.contract`.
- No import cycles between modules, counting imports inside functions too, nor between the
  packages they sit in.
- No private name (`_x`) is imported from another module.
- No remote call picks its method by a name computed at run time (`getattr(handle, name).remote`).
- `jobs`, `serving` and `shipyard` are generic top-level names: the installed distribution must be
  this checkout's, and nothing else on the path may provide the same names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"shipyard": REPO / "lib" / "shipyard", "jobs": REPO / "jobs", "serving": REPO / "serving"}


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out = {}
    for top, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = modules()


def imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import in a file, nested too."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno


def targets(module: str, names: list[str]) -> set[str]:
    """The project modules an import statement loads (`from pkg import mod` loads pkg.mod)."""
    out = {module} if module in MODULES else set()
    out |= {f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES}
    return out


@pytest.mark.parametrize(
    ("side", "forbidden"),
    [("serving", "jobs"), ("shipyard", "jobs"), ("jobs", "serving"), ("shipyard", "serving")],
)
def test_the_two_sides_never_import_each_other(side: str, forbidden: str) -> None:
    bad = [
        f"{MODULES[m].relative_to(REPO)}:{line} imports {imported}"
        for m in MODULES
        if m.split(".")[0] == side
        for imported, _, line in imports(MODULES[m])
        if imported.split(".")[0] == forbidden
    ]
    assert bad == []


def cycles_in(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of the graph meets."""
    seen: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for t in sorted(graph.get(m, ())):
            if seen.get(t) == 1:
                cycles.append([*stack[stack.index(t) :], t])
            elif t not in seen:
                visit(t, [*stack, t])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])
    return cycles


def module_graph() -> dict[str, set[str]]:
    graph = {
        m: {t for imported, names, _ in imports(p) for t in targets(imported, names)} - {m}
        for m, p in MODULES.items()
    }
    # A package's __init__ is loaded by its children anyway: edges to a parent package are not
    # dependencies of their own.
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def package_of(module: str) -> str:
    """`shipyard.config.serving` -> `shipyard.config`; a module of its own under shipyard
    (`shipyard.registry`) is its own node; jobs and serving are one node each."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "shipyard" else parts[0]


def test_no_import_cycles() -> None:
    assert cycles_in(module_graph()) == []


def test_no_import_cycles_between_packages() -> None:
    """Modules may form no cycle, and neither may the packages they sit in: `config` is the
    settings' one home, which the packages that act on them import, never the other way."""
    packages: dict[str, set[str]] = {}
    for m, ts in module_graph().items():
        edges = {package_of(t) for t in ts} - {package_of(m), "shipyard"}
        packages.setdefault(package_of(m), set()).update(edges)
    assert cycles_in(packages) == []
    # The check sees such a cycle: the arrow config -> monitoring (DriftSettings' old home).
    assert packages["shipyard.monitoring"] >= {"shipyard.config"}
    closed = {**packages, "shipyard.config": packages["shipyard.config"] | {"shipyard.monitoring"}}
    assert cycles_in(closed) != []


def calls_by_name(tree: ast.AST) -> list[int]:
    """Lines where a remote method is picked by a name computed at run time:
    `getattr(handle, name).remote(...)` or `getattr(handle, name).options(...)`."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("remote", "options")
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "getattr"
    ]


def test_no_remote_call_picks_its_method_by_name() -> None:
    """Calls through a Ray or Serve handle name their method in the code (typed, findable),
    never `getattr(handle, name).remote(...)`, which hides the path from readers and type
    checkers (the router once called the store and its variants that way)."""
    bad = [
        f"{p.relative_to(REPO)}:{line}"
        for p in MODULES.values()
        for line in calls_by_name(ast.parse(p.read_text(), str(p)))
    ]
    assert bad == []
    was = "response = getattr(self.store, method).remote(*args)"  # the router's old store call
    assert calls_by_name(ast.parse(was)) == [1]


def test_no_private_names_cross_modules() -> None:
    bad = [
        f"{MODULES[m].relative_to(REPO)}:{line} takes {name} from {imported}"
        for m in MODULES
        for imported, names, line in imports(MODULES[m])
        if imported.split(".")[0] in ROOTS
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert bad == []


def test_the_installed_packages_are_this_checkout_and_nothing_shadows_them(
    tmp_path: Path,
) -> None:
    """Imported from another directory (so only the installed distribution can provide them),
    each package is this checkout's; and no other entry on the path has the same name."""
    script = (
        "import importlib.util, json, sys, pathlib\n"
        "out = {}\n"
        "for name in ('jobs', 'serving', 'shipyard'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    others = [p for p in sys.path if p and pathlib.Path(p, name).is_dir()\n"
        "              and pathlib.Path(p, name).resolve() != pathlib.Path(spec.origin).parent]\n"
        "    out[name] = {'origin': spec.origin, 'others': others}\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    import json

    found = json.loads(done.stdout)
    for name, root in ROOTS.items():
        assert Path(found[name]["origin"]).resolve() == root / "__init__.py", found[name]
        assert found[name]["others"] == [], f"{name} is also provided by {found[name]['others']}"
