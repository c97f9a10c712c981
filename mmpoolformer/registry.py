"""The one place that registers mmpoolformer's modules.

The backbones (``PoolFormer``, ...) register themselves by decorator into
this package's ``MODELS`` and go into:

* mmpoolformer's own ``MODELS`` registry (scope ``mmpoolformer``, a child of
  mmengine's root registry), so any OpenMMLab library can build it with the
  scope-qualified name ``type='mmpoolformer.PoolFormer'``;
* ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS`` when each library is
  installed, so their configs can say ``type='PoolFormer'``.

The built-in shapes datasets go into mmdet's / mmseg's ``DATASETS``; the
hooks (``ChannelsLastHook``, ``NonFiniteCheckHook``) and the optimizer wrapper
``CPUAmpOptimWrapper`` into mmengine's root ``HOOKS`` / ``OPTIM_WRAPPERS``
(which mmdet's and mmseg's registries fall back to), each under a name of its
own: nothing that was registered before is replaced. Calling
:func:`register_all_modules` again registers nothing twice.
"""
import importlib
from typing import List

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

# Demo datasets, imported only when their library is installed.
_DATASET_MODULES = dict(mmdet='mmpoolformer.data.det_datasets',
                        mmseg='mmpoolformer.data.seg_datasets')

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmpoolformer',
                  locations=['mmpoolformer.models'])


def _register(registry: Registry, module) -> None:
    if registry.module_dict.get(module.__name__) is not module:
        registry.register_module(module=module)


def _library_registry(library: str):
    """``library.registry`` or None when the library is not installed."""
    try:
        return importlib.import_module(f'{library}.registry')
    except ImportError:
        return None


def register_all_modules() -> List[str]:
    """Register models (and demo datasets) into every installed library.

    Returns the names of the libraries that received the backbone.
    """
    # the backbones register themselves (decorators) into MODELS above
    importlib.import_module('mmpoolformer.models')
    backbones = list(MODELS.module_dict.values())
    # hooks and the CPU AMP wrapper register themselves (decorators) into
    # mmengine's root HOOKS / OPTIM_WRAPPERS under names of their own
    importlib.import_module('mmpoolformer.engine.hooks')
    importlib.import_module('mmpoolformer.engine.optim_wrappers')
    libraries = []
    for library in ('mmdet', 'mmseg'):
        registry = _library_registry(library)
        if registry is None:
            continue
        for backbone in backbones:
            _register(registry.MODELS, backbone)
        datasets = importlib.import_module(_DATASET_MODULES[library])
        for dataset in datasets.__all__:
            _register(registry.DATASETS, getattr(datasets, dataset))
        libraries.append(library)
    return libraries
