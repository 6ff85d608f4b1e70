"""The package's imports run one way: a test that walks every module's import statements
(module level, inside functions and under ``TYPE_CHECKING`` alike) and fails on a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / 'brainconv'


def _modules() -> dict:
    """Dotted module name -> path, for every module of the package (``pkg`` for ``pkg/__init__.py``)."""
    found = {}
    for path in ROOT.rglob('*.py'):
        parts = path.relative_to(ROOT.parent).with_suffix('').parts
        found['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict) -> set:
    """The package's modules that ``name`` imports, explicitly (a ``from pkg import sub`` counts
    as an import of ``pkg`` and of ``sub``; the implicit import of a parent package does not)."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            if target not in modules:
                continue
            if node.module or not node.level:
                edges.add(target)
            for alias in node.names:
                sub = f'{target}.{alias.name}'
                edges.add(sub if sub in modules else target)
    edges.discard(name)
    return edges


def _graph() -> dict:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict) -> list | None:
    """One import circle of ``graph`` as a list of modules, or None."""
    state: dict = {}
    stack: list = []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_circle():
    graph = _graph()
    assert len(graph) > 20 and graph['brainconv.layers']      # the walk found the package and its imports
    circle = _cycle(graph)
    assert circle is None, 'import circle: ' + ' -> '.join(circle)


def test_the_walk_finds_a_circle_through_a_function_level_import():
    graph = {k: set(v) for k, v in _graph().items()}
    assert _cycle(graph) is None
    graph['brainconv.shapes'].add('brainconv.layers')           # as if shapes imported layers in a function
    circle = _cycle(graph)
    assert circle is not None and circle[0] == circle[-1]


@pytest.mark.parametrize('low, high', [
    ('brainconv.lowering.context', 'brainconv.lowering.primitives'),
    ('brainconv.lowering.primitives', 'brainconv._braintrace'),
    ('brainconv.layers', 'brainconv.streaming'),
])
def test_floors(low, high):
    """A lower floor never imports a higher one, directly or through others."""
    graph = _graph()
    seen, todo = set(), [low]
    while todo:
        node = todo.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert high not in seen


def test_the_readme_layout_table_lists_the_floors_in_import_order():
    """README's layout table says a module imports only modules above it: check that against
    the imports (each row's modules may import the rows above, never a row below)."""
    readme = (ROOT.parent / 'README.md').read_text()
    table = readme[readme.index('| module | what it holds |'):]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith('| `brainconv/'):
            break
        cell = line.split('|')[1]
        names = []
        for item in cell.replace('`', '').split(','):
            item = item.strip()
            path = item if item.startswith('brainconv/') else f'brainconv/{item}'
            names.append(path.removesuffix('/').removesuffix('.py').replace('/', '.'))
        rows.append(names)
    graph = _graph()
    assert len(rows) >= 10 and all(n in graph for r in rows for n in r), rows

    def row_of(module):
        return next((i for i, r in enumerate(rows) for n in r if module == n or module.startswith(n + '.')), None)

    for module, imported in graph.items():
        here = row_of(module)
        for other in imported:
            there = row_of(other)
            if here is not None and there is not None:
                assert there <= here, f'{module} (row {here}) imports {other} (row {there}, below it)'
