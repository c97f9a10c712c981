"""Load checkpoints without running code from them.

torch >= 2.6 unpickles with ``weights_only=True`` by default: tensors,
containers and primitives only, plus the types on torch's allowlist. A
checkpoint that mmengine's ``Runner`` writes holds a few more: the message
hub's ``HistoryBuffer`` (with numpy arrays and scalars inside), whose pickled
state names its statistics methods through ``getattr(HistoryBuffer, name)``.
:func:`allow_mmengine_checkpoints` adds exactly these to torch's allowlist
(``import mmpoolformer`` calls it), so that this project's checkpoints load
with ``weights_only=True`` everywhere: ``tools/test.py``, ``--resume``,
``load_from``, ``init_cfg`` and mmdet's / mmseg's own ``init_detector``,
``DetInferencer``, ``init_model`` and ``MMSegInferencer``.

``getattr`` is not allowlisted: the name ``builtins.getattr`` resolves to
:func:`_history_buffer_getattr`, which returns ``HistoryBuffer``'s own
statistics methods and refuses everything else.

A file holding anything else is refused with :class:`UnsafeCheckpointError`,
which names the offending types and the explicit opt-ins:
``tools/train.py --resume``/``tools/test.py`` take ``--trust-checkpoint``;
``init_cfg`` takes ``weights_only=False``. :mod:`mmpoolformer.checkpoint`
reads every file through :func:`safe_torch_load`.
"""
import pickle
from typing import List

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

__all__ = ['CheckpointError', 'UnsafeCheckpointError',
           'allow_mmengine_checkpoints', 'safe_globals', 'safe_torch_load',
           'TRUST_OPTIONS']

TRUST_OPTIONS = ('tools/train.py and tools/test.py: --trust-checkpoint; '
                 "init_cfg: dict(type='Pretrained', checkpoint=..., "
                 'weights_only=False)')
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or cannot initialise the model it
    was given to; the message says what is wrong and what to do."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The file pickles Python objects that ``weights_only`` loading
    refuses (it could run code); the message names them and the opt-in."""


def _history_buffer_getattr(obj, name):
    """``getattr`` as mmengine's checkpoints use it, and no further."""
    method = getattr(HistoryBuffer, name, None) if obj is HistoryBuffer \
        and isinstance(name, str) else None
    if name in _HISTORY_BUFFER_METHODS or (
            method is not None
            and method in HistoryBuffer._statistics_methods.values()):
        return method
    raise pickle.UnpicklingError(
        f'getattr({getattr(obj, "__qualname__", type(obj).__name__)}, '
        f'{name!r}) is not part of an mmengine checkpoint; refused.')


def _numpy_core():
    core = getattr(np, '_core', None)  # numpy 2; numpy 1 has np.core
    return core.multiarray if core is not None else np.core.multiarray


def safe_globals() -> List:
    """What mmengine 0.10 writes into checkpoints besides tensors, as
    entries for ``torch.serialization.add_safe_globals``."""
    multiarray = _numpy_core()
    entries = [HistoryBuffer, np.ndarray, np.dtype,
               (_history_buffer_getattr, 'builtins.getattr')]
    # numpy 2 pickles under numpy._core, numpy 1 under numpy.core: accept
    # files written by either.
    for name in ('_reconstruct', 'scalar'):
        function = getattr(multiarray, name)
        for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
            entries.append((function, f'{module}.{name}'))
    # numpy >= 1.25 pickles dtypes of arrays with their class
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        entries += [getattr(dtypes, name) for name in dir(dtypes)
                    if name.endswith('DType')]
    return entries


def allow_mmengine_checkpoints() -> None:
    """Add :func:`safe_globals` to torch's ``weights_only`` allowlist
    (idempotent)."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # torch < 2.4 loads with weights_only=False by default
        return
    known = {id(g[0] if isinstance(g, tuple) else g)
             for g in torch.serialization.get_safe_globals()}
    add([g for g in safe_globals()
         if id(g[0] if isinstance(g, tuple) else g) not in known])


def _unsafe_globals(path: str) -> List[str]:
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  (not a zip checkpoint: no listing)
        return []
    allowed = set()
    for entry in safe_globals():
        if isinstance(entry, tuple):
            allowed.add(entry[1])
        else:
            allowed.add(f'{entry.__module__}.{entry.__qualname__}')
    return [name for name in found if name not in allowed]


def safe_torch_load(path: str, map_location='cpu', trust: bool = False):
    """``torch.load`` of a local file: ``weights_only=True`` (with mmengine's
    types allowed) unless ``trust``; an unsafe file raises
    :class:`UnsafeCheckpointError` naming what it holds."""
    if trust:
        return torch.load(path, map_location=map_location,
                          weights_only=False)
    allow_mmengine_checkpoints()
    try:
        return torch.load(path, map_location=map_location,
                          weights_only=True)
    except pickle.UnpicklingError as error:
        offending = _unsafe_globals(path)
        what = (', '.join(offending) if offending else
                str(error).strip().splitlines()[-1][:300])
        raise UnsafeCheckpointError(
            f'{path} holds Python objects that safe loading refuses, '
            f'because unpickling them could run code: {what}. mmengine '
            'checkpoints need none of them. Nothing was loaded. Only if you '
            'trust where the file came from, load it anyway with the '
            f'explicit opt-in ({TRUST_OPTIONS}).') from None
