"""The configs that come with mmpoolformer, by name, from any directory.

A name is a path relative to the ``configs`` folder, with or without the
``configs/`` prefix and the ``.py`` suffix
(``'detection/retinanet_poolformer_s12'``), or a file name alone when only
one config has it (``'retinanet_poolformer_s12_shapes'``). It is looked up
in the copy a regular install ships (``mmpoolformer/.mim/configs``, as in
OpenMMLab packages), then in the checkout the package was imported from
(``<repo>/configs``, for editable installs and source trees). Configs found
there inherit their ``_base_`` files from the same copy.

Only the standard library is imported here; :func:`get_config` imports
mmengine when called.
"""
import difflib
import os
import os.path as osp
from typing import List

_PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__)))
_PREFIXES = ('mmpoolformer::', './', 'configs/')


def config_roots() -> List[str]:
    """The ``configs`` folders searched, in order (only those that exist)."""
    roots = [osp.join(_PACKAGE_DIR, '.mim', 'configs')]
    repo = osp.dirname(_PACKAGE_DIR)
    # a checkout: the package sits next to setup.py and configs/ (never a
    # stray configs/ folder of some other site-packages entry)
    if osp.isfile(osp.join(repo, 'setup.py')):
        roots.append(osp.join(repo, 'configs'))
    return [root for root in roots if osp.isdir(root)]


def list_configs() -> List[str]:
    """Names of all configs (``_base_`` files excluded) in the first root,
    e.g. ``'detection/retinanet_poolformer_s12.py'``."""
    roots = config_roots()
    if not roots:
        return []
    names = []
    for folder, subfolders, files in os.walk(roots[0]):
        subfolders[:] = sorted(d for d in subfolders if d != '_base_'
                               and not d.startswith(('.', '__')))
        rel = osp.relpath(folder, roots[0]).replace(os.sep, '/')
        names += [name if rel == '.' else f'{rel}/{name}'
                  for name in sorted(files) if name.endswith('.py')]
    return names


def _normalize(name: str) -> str:
    name = name.replace('\\', '/')
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name if name.endswith('.py') else name + '.py'


def get_config_path(name: str) -> str:
    """Absolute path of the config ``name`` (see the module docstring).

    Raises:
        FileNotFoundError: no config of that name, or a bare file name that
            several configs share; the message names the candidates.
    """
    roots = config_roots()
    relative = _normalize(name)
    if osp.isabs(relative) or '..' in relative.split('/'):
        raise FileNotFoundError(f'{name!r} is not a config name (a path '
                                'relative to the configs folder)')
    for root in roots:
        path = osp.join(root, relative)
        if osp.isfile(path):
            return path
    available = list_configs()
    if '/' not in relative:
        matches = [c for c in available if c.rsplit('/', 1)[-1] == relative]
        if len(matches) == 1:
            return osp.join(roots[0], matches[0])
        if matches:
            raise FileNotFoundError(
                f'{name!r} names several configs: {", ".join(matches)}; '
                'give the folder too')
    # compare like with like: folder/file names, or file names alone
    by_key = {(c if '/' in relative else c.rsplit('/', 1)[-1]): c
              for c in available}
    close = [by_key[k] for k in difflib.get_close_matches(
        relative, list(by_key), n=3, cutoff=0.6)]
    hint = (f' Did you mean {" or ".join(close)}?' if close else
            f' Configs: {", ".join(available)}.' if available else '')
    where = (f'not in {" or ".join(roots)}' if roots else
             'and there is no configs folder (neither mmpoolformer/.mim/'
             'configs nor a checkout next to the package)')
    raise FileNotFoundError(f'No config {name!r}: not a file, {where}.{hint}')


def get_config(name: str):
    """The :class:`mmengine.config.Config` of the config ``name`` (a name
    as in :func:`get_config_path`, or a path to any config file)."""
    from mmengine.config import Config
    path = name if osp.isfile(name) else get_config_path(name)
    return Config.fromfile(path)
