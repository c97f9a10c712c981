"""Whether the forward runs eagerly or is being compiled, traced or
scripted (graphs must not take eager-only branches)."""
import torch

# Whether torch.compile is tracing; it treats this query as a constant.
is_compiling = getattr(getattr(torch, 'compiler', None), 'is_compiling',
                       lambda: False)


def shapes_are_symbolic() -> bool:
    """True while TorchScript, ``torch.jit.trace`` or ``torch.compile``
    runs the forward: input checks are skipped there (shapes may be
    symbolic, and a compiled graph must not branch on them), and eager-only
    rewrites (``activations.GELU``'s view) leave the graph as written."""
    return (is_compiling() or torch.jit.is_scripting()
            or torch.jit.is_tracing())
