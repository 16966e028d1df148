"""whisperd.wire, the message contract's words and limits: a leaf module, named once, and no import cycle."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

from whisperd import contract, wire
from whisperd.api import completions

PACKAGE = Path(wire.__file__).resolve().parent
SCHEMA = PACKAGE / "schema"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def whisperd_imports(path: Path, modules: set[str]) -> set[str]:
    """Every whisperd module ``path`` imports, at the top or inside a function.

    ``from whisperd.x import y`` is an import of ``whisperd.x.y`` when that is a module, else of
    ``whisperd.x``; the package ``__init__`` that Python runs first on the way is not counted (it is
    an edge of its own only where a module imports a name from it), so a package's re-exports
    make no false cycle.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): whisperd_imports(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for dep in sorted(graph[node]):
            cycle = visit(dep)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_wire_imports_nothing_of_whisperd():
    graph = import_graph()
    assert graph["whisperd.wire"] == set()
    tree = ast.parse(Path(wire.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n == "whisperd" or n.startswith(("whisperd.", "."))], names


def test_no_import_cycle_among_whisperd_modules():
    graph = import_graph()
    assert len(graph) > 30 and "whisperd.contract" in graph["whisperd.pipeline"], "the graph was built"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"], "cycles are found"
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_contract_does_not_import_the_configuration():
    assert not {"whisperd.config", "whisperd.settings"} & import_graph()["whisperd.contract"]


def test_every_status_has_a_spanish_label():
    assert set(wire.LABELS) == {wire.QUEUED, *wire.STATUSES}
    assert all(isinstance(label, str) and label for label in wire.LABELS.values())
    assert len(set(wire.LABELS.values())) == len(wire.LABELS), "no two statuses look the same to users"
    assert set(wire.FINAL) < set(wire.STATUSES) and wire.QUEUED not in wire.STATUSES
    status = json.loads((SCHEMA / "completion.schema.json").read_text())["properties"]["status"]["enum"]
    assert sorted(status) == sorted(wire.STATUSES), "the schema's statuses are the wire's"


def test_one_completion_limit_for_the_contract_and_the_api():
    default = inspect.signature(contract.Completion.from_json).parameters["max_bytes"].default
    assert default is wire.MAX_COMPLETION_BYTES
    assert completions.MAX_COMPLETION_BYTES is wire.MAX_COMPLETION_BYTES  # what the API's listener parses with
    assert contract.MAX_COMPLETION_BYTES is wire.MAX_COMPLETION_BYTES
    body = b'{"task_id": "t", "status": "done", "text": "'
    body += b"a" * (wire.MAX_COMPLETION_BYTES - len(body) - 2) + b'"}'
    assert len(body) == wire.MAX_COMPLETION_BYTES
    assert len(completions.parse_completion(body).text) > 16_000_000, "a completion at the limit is taken"
    try:
        completions.parse_completion(body + b" ")
    except ValueError as e:
        assert "limit" in str(e)
    else:
        raise AssertionError("a completion over the limit was taken")


def test_the_vocabulary_is_the_contracts_and_the_format_check_is_one():
    for name in ("FORMATS", "DEFAULT_FORMATS", "TASK_ID_RE", "DEFAULT_MAX_JOB_BYTES", "ErrorCode", "DONE"):
        assert getattr(contract, name) is getattr(wire, name), name
    assert wire.unknown_formats(["json", "docx", "txt", "pdf"]) == ["docx", "pdf"]
    assert wire.unknown_formats(wire.FORMATS) == [] and wire.unknown_formats([]) == []
    assert wire.unknown_formats([None, 3]) == [None, 3]
