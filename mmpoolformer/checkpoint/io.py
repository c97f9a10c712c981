"""Reading checkpoint files: local paths, URLs (through torch's download
cache) and whole-model files for the Runner, each checked before
``torch.load`` and loaded with ``weights_only=True`` through
:func:`~mmpoolformer.checkpoint.safe_load.safe_torch_load`; and writing
them whole or not at all (:func:`save_checkpoint_file`).

A missing, empty, truncated or corrupted file, a file of another kind and an
unreachable URL raise :class:`CheckpointError` naming the file and what to
do. Nothing here knows about layouts (see :mod:`.layouts`) or models.
"""
import contextlib
import http.client
import os
import os.path as osp
import re
import tempfile
import urllib.parse
import zipfile
import zlib

import torch

from .safe_load import CheckpointError, safe_torch_load

# First bytes of files that are not torch checkpoints, and what they are.
_NOT_CHECKPOINTS = (
    (b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'),
    (b'GIF8', 'a GIF image'), (b'%PDF', 'a PDF document'),
    (b'\x1f\x8b', 'a gzip archive (unpack it first)'),
    (b'\x93NUMPY', 'a numpy array file'),
    (b'<', 'an HTML/XML page (an error or login page saved in place of '
           'the file?)'))
_REDO = ('Download it again (delete the file first) or save it again with '
         'torch.save; a training run cut off while saving resumes from the '
         'checkpoint before (--resume without a file takes the last '
         'complete one). Nothing was loaded.')


def save_checkpoint_file(obj, destination: str) -> None:
    """``torch.save(obj, destination)``, atomically: written to a temporary
    file beside it, synced, then renamed over it. A run cut off while
    writing leaves the old file (or none), never a truncated one, and a
    conversion may write over its own source, which it has read already.
    The file gets the permissions ``open(destination, 'wb')`` would give a
    new file (the temporary one starts private)."""
    folder = osp.dirname(osp.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=folder, prefix=f'.{osp.basename(destination)}.', suffix='.tmp')
    try:
        with os.fdopen(handle, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _is_url(source: str) -> bool:
    return re.match(r'^https?://', source) is not None


def _cache_path(url: str) -> str:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url``."""
    name = osp.basename(urllib.parse.urlparse(url).path)
    return osp.join(torch.hub.get_dir(), 'checkpoints', name)


def _download(url: str) -> str:
    """Fetch ``url`` into torch's hub cache unless it is there already;
    return the cached path. An unreachable URL raises a
    :class:`CheckpointError` that says how to work offline."""
    cached = _cache_path(url)
    if osp.exists(cached):
        return cached
    try:
        os.makedirs(osp.dirname(cached), exist_ok=True)
        torch.hub.download_url_to_file(url, cached, progress=True)
    except (OSError, http.client.HTTPException) as error:
        reason = getattr(error, 'reason', None) or error
        raise CheckpointError(
            f'Could not download the checkpoint {url} ({reason}). On a '
            'machine without network access, download the file elsewhere '
            f'(e.g. wget {url}), copy it here and set init_cfg.checkpoint '
            'to the local path (e.g. --cfg-options '
            'model.backbone.init_cfg.checkpoint=/path/to/'
            f'{osp.basename(cached)}), or put it at {cached} (torch\'s '
            'download cache, under $TORCH_HOME). Nothing was loaded.'
        ) from error
    return cached


def _check_checkpoint_file(path: str, what: str):
    """Refuse, before ``torch.load``, a file that cannot be a torch
    checkpoint: empty, truncated, or another kind of file. ``what`` names
    the file in the message."""
    with open(path, 'rb') as file:
        head = file.read(64)
    if not head:
        raise CheckpointError(f'{what} is empty (0 bytes): the download or '
                              f'save was cut off. {_REDO}')
    if head.startswith(b'PK\x03\x04'):  # torch.save's zip format
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f'{what} is truncated or corrupted: it starts as a torch '
                'checkpoint (a zip archive) but its end, the archive '
                f'directory, is missing. {_REDO}')
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                # torch.load reads no checksum: a damaged tensor would load
                bad = archive.testzip()
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as err:
            bad = f'? ({err})'
        if bad is not None:
            raise CheckpointError(
                f'{what} is corrupted: its entry {bad} fails the checksum '
                f'of the archive. {_REDO}')
        if not any(n == 'data.pkl' or n.endswith('/data.pkl')
                   for n in names):
            raise CheckpointError(
                f'{what} is a zip archive but not a torch checkpoint (no '
                f'data.pkl inside; first entries: {names[:5]}). Give the '
                '.pth/.pth.tar file itself.')
        return
    if head[:1] == b'\x80':  # a pickle: torch.save's legacy format
        return
    kind = next((k for magic, k in _NOT_CHECKPOINTS
                 if head.startswith(magic)), None)
    if kind is None and head[8:10] == b'{"':
        kind = ('a safetensors file; convert it with torch.save('
                'safetensors.torch.load_file(path), new_path)')
    if kind is None:
        try:
            text = head.decode('utf-8')
        except UnicodeDecodeError:
            kind = f'an unknown format (first bytes {head[:8]!r})'
        else:
            first = text.strip().splitlines()[0] if text.strip() else text
            kind = f'a text file (it starts with {first[:40]!r})'
    raise CheckpointError(
        f'{what} is not a torch checkpoint: it looks like {kind}. Give a '
        'file written by torch.save (.pth / .pth.tar), such as the released '
        'ImageNet weights; nothing was loaded.')


def _is_read_error(error: Exception) -> bool:
    """True for torch.load's errors on a damaged file (not, say, a bad
    ``map_location``)."""
    if isinstance(error, (EOFError, zipfile.BadZipFile)):
        return True
    message = str(error)
    return any(text in message for text in (
        'PytorchStreamReader', 'zip archive', 'central directory',
        'archive is corrupted', 'unexpected EOF', 'wrong byte size',
        'size of the file'))


def read_checkpoint(source: str, weights_only: bool = True,
                    map_location='cpu') -> dict:
    """Read a local path or URL. ``weights_only`` refuses pickled Python
    objects other than tensors and containers (safer for downloads).

    A missing, empty, truncated or corrupted file, a file that is not a
    torch checkpoint (an image, a text or HTML page) and an unreachable
    URL raise :class:`CheckpointError` naming the file or URL and what to
    do."""
    if _is_url(source):
        path = _download(source)
        what = f'The cached download {path} of {source}'
    elif osp.isfile(source):
        path, what = source, f'Checkpoint file {source!r}'
    else:
        raise CheckpointError(
            f'Checkpoint file {source!r} does not exist. Give a local '
            'path or an http(s) URL in init_cfg.checkpoint.')
    _check_checkpoint_file(path, what)
    try:
        return safe_torch_load(path, map_location, trust=not weights_only)
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        if not _is_read_error(error):
            raise
        raise CheckpointError(
            f'{what} is truncated or corrupted: torch.load could not read '
            f'it ({str(error).splitlines()[0]}). {_REDO}') from error


def read_whole_checkpoint(filename: str, map_location='cpu',
                          trust: bool = False) -> dict:
    """What ``tools/train.py`` wrote (a whole model with its meta), for the
    Runner and the tools: a local path (or ``file://``) through
    :func:`read_checkpoint` (``weights_only=True`` unless ``trust``; a
    missing, truncated, corrupted or unsafe file is a
    :class:`CheckpointError`); other schemes through mmengine's
    ``CheckpointLoader``."""
    if '://' in filename and not filename.startswith('file://'):
        from mmengine.runner.checkpoint import CheckpointLoader
        return CheckpointLoader.load_checkpoint(filename, map_location)
    path = osp.expanduser(filename[len('file://'):]
                          if filename.startswith('file://') else filename)
    if not osp.isfile(path):
        raise CheckpointError(
            f'Checkpoint {path} does not exist (relative paths are from '
            f'{osp.abspath(".")}); nothing was loaded.')
    return read_checkpoint(path, weights_only=not trust,
                           map_location=map_location)
