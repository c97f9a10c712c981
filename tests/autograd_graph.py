"""Test helper: what an autograd graph is made of."""


def node_names(outputs) -> list:
    """Type names of the autograd nodes behind ``outputs``, one per node."""
    names, stack, seen = [], [o.grad_fn for o in outputs], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names
