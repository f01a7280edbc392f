"""The layout's rules, checked on the source: no import circles, arrows only where the rooms allow.

Every import counts, at module level or inside a function (a lazy import is still an arrow).
docs/architecture.md draws the same table as a picture; change both together.
"""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Room -> the rooms its modules may import. Entry points sit on top (workers: the Celery tasks;
# api: HTTP; face_detect_api: the wiring), the domain apps below them, core/detection/storage at
# the bottom. An empty set: the room imports nothing of the project's.
ALLOWED = {
    "face_detect_api": {
        "api",
        "jobs",
        "rollouts",
        "callbacks",
        "registry",
        "clients",
        "storage",
        "detection",
        "core",
        "workers",
        "dashboard",
    },
    # The staff dashboard: pages drawn from the domain's reads, beside api/ (HTML, not DRF).
    "dashboard": {"jobs", "rollouts", "registry", "core"},
    "workers": {"jobs", "rollouts", "callbacks", "registry", "storage", "detection", "core"},
    "api": {"jobs", "rollouts", "callbacks", "registry", "clients", "storage", "core"},
    "jobs": {"rollouts", "registry", "callbacks", "clients", "storage", "detection", "core"},
    # Rollouts route jobs and judge figures handed to them; they never read the jobs tables.
    "rollouts": {"registry", "callbacks", "detection", "core"},
    "callbacks": {"storage", "core"},
    # Model artifacts are objects in the bucket: the registry stores and fetches them.
    "registry": {"detection", "core", "storage"},
    "clients": {"core"},
    "storage": {"core"},
    "detection": set(),
    "core": set(),
}
# Third-party packages only some rooms may import.
FORBIDDEN_PACKAGES = {
    # Plain Python: engines run, and are tested, without Django.
    "detection": {"django", "rest_framework", "celery"},
    "core": {"rest_framework", "celery"},
    # Only api/ knows HTTP serializers and status codes.
    **{
        room: {"rest_framework", "drf_spectacular"}
        for room in ("jobs", "rollouts", "callbacks", "registry", "clients", "storage", "workers", "dashboard")
    },
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for room in ALLOWED:
        for path in (ROOT / room).rglob("*.py"):
            modules[_module_name(path)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module that ``name`` imports: project modules by full name, others by top package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            # `from pkg import submodule` imports the submodule too.
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known)
    resolved = set()
    for target in found:
        # The longest project module that the name starts with, else the third-party top package.
        candidate = target
        while candidate and candidate not in known:
            candidate = candidate.rpartition(".")[0]
        resolved.add(candidate or target.split(".")[0])
    resolved.discard(name)
    return resolved


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def _room(module: str) -> str:
    return module.split(".")[0]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_check_sees_every_room_and_their_imports(graph):
    """The walk finds the project's modules and real arrows (a check that saw nothing would pass)."""
    assert {"jobs.services", "callbacks.services", "registry.services", "api.views", "workers.tasks", "detection.base"} <= set(graph)
    assert "registry.services" in graph["jobs.services.submission"] and "jobs.services" in graph["workers.tasks"]
    assert "django" in graph["jobs.services.detection"]


def test_there_is_no_import_circle(graph):
    """No module reaches itself through imports, lazy ones included."""
    assert find_cycles(graph) == []


def test_the_circle_finder_finds_a_circle():
    """A planted circle a -> b -> c -> a is reported (so an empty answer means something)."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_rooms_import_only_what_the_layout_allows(graph):
    """Each arrow between rooms is in ALLOWED: entry points on top, services never reach a task."""
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _room(target) in ALLOWED and _room(target) != _room(module) and _room(target) not in ALLOWED[_room(module)]
    )
    assert wrong == []


def test_layers_keep_their_third_party_packages(graph):
    """detection/ imports no Django; only api/ imports DRF and drf-spectacular."""
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if target.split(".")[0] in FORBIDDEN_PACKAGES.get(_room(module), set())
    )
    assert wrong == []


def test_api_holds_no_model():
    """The HTTP room has no models module: every model lives in its domain app."""
    assert not (ROOT / "api" / "models.py").exists()
