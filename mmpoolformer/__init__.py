"""PoolFormer backbone for mmdet 3.x and mmsegmentation 1.x.

Importing the package registers its modules (see :mod:`mmpoolformer.registry`)
into whichever of mmdet and mmseg are installed, and adds the few types that
mmengine writes into checkpoints to torch's ``weights_only`` allowlist (see
:mod:`mmpoolformer.checkpoint.safe_load`). It patches nothing in mmengine,
mmcv, mmdet or mmseg.
"""
from .registry import register_all_modules
from .checkpoint import allow_mmengine_checkpoints
from .utils import get_config, get_config_path
from .version import __version__

register_all_modules()
allow_mmengine_checkpoints()

__all__ = ['__version__', 'get_config', 'get_config_path',
           'register_all_modules']
