"""PoolFormer checkpoint layouts: read, recognise, convert, load with a report.

Layouts understood (all end up in the official one, which the backbone uses):

* official release (``patch_embed.proj``, ``network.{i}.{j}.*``, classifier
  ``norm``/``head``), bare or wrapped in ``state_dict``/``model``;
* official dense models and whole detectors/segmentors trained with mmdet 2.x
  / mmseg 0.x or 3.x / 1.x (``backbone.``-prefixed, plus necks and heads);
* mmpretrain classifiers (``backbone.``-prefixed, head under ``head.fc``);
* timm >= 0.9 (``stem.conv``, ``stages.N.downsample.conv``,
  ``stages.N.blocks.M.*``, ``layer_scale1.scale``, ``head.norm``, ``head.fc``);
* ``module.``-prefixed copies saved from DistributedDataParallel.

Nothing here knows about training; the backbone calls :func:`load_pretrained`
once from ``init_weights``.
"""
import http.client
import os
import os.path as osp
import re
import urllib.parse
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log

from mmpoolformer.safe_load import CheckpointError, safe_torch_load

# Keys the dense backbone has and ImageNet files lack: the per-stage output
# norms (they start from GroupNorm's identity init, as in the official code).
OUTPUT_NORM = re.compile(r'^norm[0246]\.')
# Keys a file may have that the model need not use: the ImageNet classifier
# (`norm`, `head`) and output norms of stages the model does not output (or
# `norm0` under fork_last3).
IGNORABLE = re.compile(r'^(norm\d*|head)\.')
_TIMM_RULES = (
    (re.compile(r'^stem\.conv\.'), 'patch_embed.proj.'),
    (re.compile(r'^stages\.(\d+)\.downsample\.conv\.'),
     lambda m: f'network.{2 * int(m.group(1)) - 1}.proj.'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.layer_scale(\d)\.scale$'),
     lambda m: f'network.{2 * int(m.group(1))}.{m.group(2)}.'
               f'layer_scale_{m.group(3)}'),
    (re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.'),
     lambda m: f'network.{2 * int(m.group(1))}.{m.group(2)}.'),
    (re.compile(r'^head\.norm\.'), 'norm.'),
    (re.compile(r'^head\.fc\.'), 'head.'),
)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, also logged as a short report."""
    source: str
    layout: str
    loaded: List[str] = field(default_factory=list)
    fresh: List[str] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    dropped_prefixed: int = 0

    def summary(self, model_name: str) -> str:
        lines = [f'{model_name}: loaded {len(self.loaded)} tensors from '
                 f'{self.source} ({self.layout} layout).']
        if self.dropped_prefixed:
            lines.append(f'  skipped {self.dropped_prefixed} entries outside '
                         'the backbone (neck/heads of a whole model).')
        if self.fresh:
            lines.append('  initialised fresh (expected: ImageNet files have '
                         'no output norms): ' + _modules(self.fresh))
        if self.ignored:
            lines.append('  ignored (expected: not used by this model, e.g. '
                         'the ImageNet classifier): ' + _modules(self.ignored))
        return '\n'.join(lines)


def _modules(keys: List[str]) -> str:
    return ', '.join(OrderedDict.fromkeys(k.rsplit('.', 1)[0] for k in keys))


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


def extract_state_dict(ckpt, prefix: Optional[str] = None
                       ) -> Tuple[Dict[str, torch.Tensor], int]:
    """Unwrap ``state_dict``/``model``, strip ``module.``, and keep the
    backbone part: keys under ``prefix`` (default: ``backbone.`` when a whole
    model was saved). Returns the tensors and how many entries were skipped
    for lying outside the prefix."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'Expected a dict of tensors, got {type(ckpt)}')
    for wrapper in ('state_dict', 'model'):
        if isinstance(ckpt.get(wrapper), dict):
            ckpt = ckpt[wrapper]
            break
    tensors = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f'No tensors found in the checkpoint (top-level keys: '
            f'{list(ckpt)[:8]}).')
    if all(k.startswith('module.') for k in tensors):
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
    if prefix is None and any(k.startswith('backbone.') for k in tensors):
        prefix = 'backbone.'
    if not prefix:
        return tensors, 0
    kept = {k[len(prefix):]: v for k, v in tensors.items()
            if k.startswith(prefix)}
    if not kept:
        raise CheckpointError(f'No checkpoint key starts with prefix '
                              f'{prefix!r}; first keys: {list(tensors)[:5]}')
    return kept, len(tensors) - len(kept)


def detect_layout(state_dict: Dict[str, torch.Tensor]) -> str:
    if any(k.startswith('stem.conv.') or k.startswith('stages.')
           for k in state_dict):
        return 'timm'
    if any(k.startswith('patch_embed.proj.') or k.startswith('network.')
           for k in state_dict):
        return 'official'
    raise CheckpointError(
        'Unknown checkpoint layout: expected PoolFormer keys such as '
        "'patch_embed.proj.weight' / 'network.0.0.mlp.fc1.weight' (official, "
        "mmdet/mmseg/mmpretrain) or 'stem.conv.weight' / 'stages.0.blocks.0."
        f"*' (timm); first keys found: {sorted(state_dict)[:6]}.")


def timm_to_official(state_dict: Dict[str, torch.Tensor]
                     ) -> Dict[str, torch.Tensor]:
    """Rename timm >= 0.9 PoolFormer (v1) keys to the official layout."""
    converted = OrderedDict()
    for key, value in state_dict.items():
        new_key = key
        for pattern, replacement in _TIMM_RULES:
            if pattern.search(key):
                new_key = pattern.sub(replacement, key, count=1)
                break
        if new_key.endswith(('layer_scale_1', 'layer_scale_2')):
            value = value.reshape(-1)
        elif re.search(r'\.mlp\.fc\d\.weight$', new_key) and value.ndim == 2:
            value = value[:, :, None, None]  # Linear -> 1x1 conv
        converted[new_key] = value
    return converted


def to_official(state_dict: Dict[str, torch.Tensor]
                ) -> Tuple[Dict[str, torch.Tensor], str]:
    layout = detect_layout(state_dict)
    if layout == 'timm':
        state_dict = timm_to_official(state_dict)
    return state_dict, layout


def describe_arch(state_dict: Dict[str, torch.Tensor]) -> str:
    """Infer 'layers (..) embed_dims (..)' from official-layout keys."""
    layers, dims = [], []
    for stage in range(4):
        blocks = {int(m.group(1)) for k in state_dict
                  for m in [re.match(rf'network\.{2 * stage}\.(\d+)\.', k)]
                  if m}
        layers.append(max(blocks) + 1 if blocks else 0)
        weight = state_dict.get(f'network.{2 * stage}.0.norm1.weight')
        dims.append(int(weight.shape[0]) if weight is not None else 0)
    from mmpoolformer.models.poolformer import ARCH_SETTINGS
    for name, arch in ARCH_SETTINGS.items():
        if (tuple(layers) == arch['layers']
                and tuple(dims) == arch['embed_dims']):
            return f'PoolFormer-{name} (layers {tuple(layers)}, ' \
                   f'embed_dims {tuple(dims)})'
    return f'layers {tuple(layers)}, embed_dims {tuple(dims)}'


def _model_name(model) -> str:
    settings = model.arch_settings
    return (f'PoolFormer-{model.arch}' if model.arch != 'custom' else
            f'PoolFormer(layers {settings["layers"]}, '
            f'embed_dims {settings["embed_dims"]})')


def match_state_dict(model, state_dict: Dict[str, torch.Tensor]
                     ) -> Tuple[List[str], List[str]]:
    """Check that ``state_dict`` (official layout) fits ``model``.

    Returns (fresh, ignored): the model keys left at their init because the
    file has no output norms, and the file keys the model does not use. Any
    other difference raises :class:`CheckpointError`.
    """
    own = model.state_dict()
    fresh = [k for k in own if k not in state_dict]
    ignored = [k for k in state_dict if k not in own]
    missing = [k for k in fresh if not OUTPUT_NORM.match(k)]
    unexpected = [k for k in ignored if not IGNORABLE.match(k)]
    mismatched = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model '
                  f'{tuple(v.shape)}' for k, v in own.items()
                  if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            problems.append(f'{len(mismatched)} shape mismatches, e.g. '
                            + '; '.join(mismatched[:3]))
        if missing:
            problems.append(f'{len(missing)} of {len(own)} model weights '
                            f'missing from the file, e.g. {missing[:3]}')
        if unexpected:
            problems.append(f'{len(unexpected)} file weights the model does '
                            f'not have, e.g. {unexpected[:3]}')
        if any(k.endswith('.running_mean') for k in missing):
            problems.append(
                f'the model has batch norms (norm_cfg='
                f'{getattr(model, "norm_cfg", None)}); '
                'files in the official layout use one-group GroupNorm, so '
                'leave norm_cfg unset to load them')
        raise CheckpointError(
            f'Checkpoint does not fit {_model_name(model)}: the file looks '
            f'like {describe_arch(state_dict)}. ' + '; '.join(problems) +
            '. Pick the matching `arch` or the right checkpoint; nothing '
            'was loaded.')
    return fresh, ignored


def load_pretrained(model, checkpoint: str, prefix: Optional[str] = None,
                    weights_only: bool = True,
                    map_location='cpu') -> LoadReport:
    """Load ``checkpoint`` into a :class:`PoolFormer` and log a report.

    Args:
        model: The backbone.
        checkpoint: Local path or http(s) URL.
        prefix: Take only keys under this prefix (stripped). Default: the
            ``backbone.`` part when the file holds a whole model.
        weights_only: Passed to ``torch.load``; set False only for trusted
            files that pickle other Python objects (old mmdet metadata).

    Raises:
        CheckpointError: if the file does not fit; nothing is loaded then.
    """
    raw = read_checkpoint(checkpoint, weights_only, map_location)
    state_dict, dropped = extract_state_dict(raw, prefix)
    state_dict, layout = to_official(state_dict)
    fresh, ignored = match_state_dict(model, state_dict)
    usable = {k: v for k, v in state_dict.items() if k not in ignored}
    model.load_state_dict(usable, strict=False)
    report = LoadReport(source=checkpoint, layout=layout,
                        loaded=sorted(usable), fresh=fresh, ignored=ignored,
                        dropped_prefixed=dropped)
    print_log(report.summary(_model_name(model)), logger='current')
    return report


def convert_to_official(source: str, destination: str,
                        prefix: Optional[str] = None,
                        weights_only: bool = True) -> Tuple[str, int]:
    """Write ``source`` (any supported layout) as an official-layout bare
    state dict. Returns the detected layout and the number of tensors."""
    raw = read_checkpoint(source, weights_only)
    state_dict, _ = extract_state_dict(raw, prefix)
    state_dict, layout = to_official(state_dict)
    torch.save(OrderedDict(state_dict), destination)
    return layout, len(state_dict)


def use_safe_loader(runner, trust: bool = False) -> None:
    """Make ``runner`` read local files for ``load_from``/``resume`` with
    :func:`read_checkpoint`: ``weights_only=True`` with mmengine's types
    allowed (``trust``: ``weights_only=False``), and a clear
    :class:`CheckpointError` for a missing, truncated, corrupted or unsafe
    file.

    Only this Runner instance changes (its ``load_checkpoint`` attribute);
    mmengine's ``CheckpointLoader`` and other runners are left as they are.
    URLs and other schemes go to mmengine's loader
    (:func:`read_whole_checkpoint`).
    """
    from mmengine.model import is_model_wrapper
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    def load_checkpoint(filename, map_location='cpu', strict=False,
                        revise_keys=[(r'^module.', '')]):
        checkpoint = read_whole_checkpoint(filename, map_location, trust)
        # the same steps as mmengine's Runner.load_checkpoint
        runner.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict,
                                               revise_keys=revise_keys)
        runner._has_loaded = True
        runner.logger.info(f'Load checkpoint from {filename}'
                           + (' (trusted: weights_only=False)'
                              if trust else ''))
        return checkpoint

    runner.load_checkpoint = load_checkpoint
