"""The package's modules import each other without cycles.

Every ``import`` in ``mmpoolformer/`` counts, those inside functions too
(a lazy import hides a cycle from the interpreter, not from the reader), so
the layout reads from low to high: ``checkpoint`` and ``models`` below
``engine``/``runner``, ``tools/`` on top.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'mmpoolformer'


def _modules():
    found = {}
    for path in PACKAGE.rglob('*.py'):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        found['.'.join(parts)] = path
    return found


def _imports(name, path, modules):
    """The package modules that module ``name`` imports anywhere in it."""
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) -
                                          node.level + 1]
                source = '.'.join(base + ([node.module] if node.module
                                          else []))
            else:
                source = node.module or ''
            targets.add(source)
            # `from package import module` imports that module
            targets.update(f'{source}.{alias.name}' for alias in node.names)
    return {t for t in targets if t in modules and t != name}


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_is_read_correctly():
    modules = _modules()
    graph = {name: _imports(name, path, modules)
             for name, path in modules.items()}
    # relative, absolute and function-level imports are all seen
    assert 'mmpoolformer.checkpoint.safe_load' in \
        graph['mmpoolformer.checkpoint.io']
    assert 'mmpoolformer.checkpoint.whole_model' in \
        graph['mmpoolformer.checkpoint.runner_loader']
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == \
        [['a', 'b', 'c']]


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules)
             for name, path in modules.items()}
    assert len(graph) > 30
    assert _cycles(graph) == []
