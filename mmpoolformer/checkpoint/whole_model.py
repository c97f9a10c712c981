"""Whole detectors / segmentors that other libraries released, loaded into
this package's mmdet 3 / mmseg 1 configs.

Files written by the mmcv 1.x Runner (mmdet 2.x, mmseg 0.x: the official
PoolFormer RetinaNet / Mask R-CNN COCO models, mmseg's Semantic FPN
PoolFormer ADE20K models) are recognised by their ``meta``
(``mmdet_version`` / ``mmseg_version`` / ``mmcv_version`` / ``CLASSES``;
files of mmengine's Runner say ``mmengine_version`` or ``dataset_meta`` and
are left alone), converted to what the model in hand expects, checked
against it, and the conversion is logged as a :class:`WholeModelReport`.

What differs, checked against the libraries' code:

* Key names: none for the modules these models use. The attribute names of
  mmdet 2.19's and 3.3's ``FPN`` (``lateral_convs``, ``fpn_convs``),
  ``RetinaHead`` (``cls_convs``, ``reg_convs``, ``retina_cls``,
  ``retina_reg``), ``RPNHead`` (``rpn_conv``, ``rpn_cls``, ``rpn_reg``),
  ``StandardRoIHead`` (``bbox_head``, ``mask_head``, RoI extractors without
  weights), ``Shared2FCBBoxHead`` (``shared_fcs``, ``fc_cls``, ``fc_reg``)
  and ``FCNMaskHead`` (``convs``, ``upsample``, ``conv_logits``), and of
  mmseg 0.19's and 1.2's ``FPN``, ``FPNHead`` (``scale_heads``) and
  ``BaseDecodeHead`` (``conv_seg``) are the same (mmdet/models/necks/fpn.py,
  dense_heads/{retina,rpn,anchor}_head.py,
  roi_heads/{standard_roi_head,base_roi_head}.py,
  roi_heads/bbox_heads/{convfc_bbox_head,bbox_head}.py,
  roi_heads/mask_heads/fcn_mask_head.py; mmseg/models/necks/fpn.py,
  decode_heads/{fpn_head,decode_head}.py, in both versions). mmdet 3's own
  ``_load_from_state_dict`` hooks do not rename these either: the ones in
  ``detectors/single_stage.py:39`` / ``two_stage.py:66`` only swap
  ``bbox_head`` and ``rpn_head`` when a one-stage file goes into a
  two-stage model or back, and ``dense_heads/anchor_free_head.py:167``
  (FCOS-style heads) is not used here. So :data:`HEAD_RENAMES` is empty.
* Backbone: mmpretrain's / mmcls 0.23's ``PoolFormer`` (mmseg's models) and
  the official ``poolformer_*_feat`` (the COCO models) use the official
  names (``patch_embed.proj``, ``network.{0..6}``, output norms
  ``norm{0,2,4,6}`` named by ``out_indices=(0, 2, 4, 6)``); a backbone part
  in another layout the backbone's ``checkpoint_layout`` knows (timm) is
  renamed, and the renames are reported.
* ``FORK_LAST3``: RetinaNet files trained with ``FORK_LAST3=1`` have no
  ``backbone.norm0``, as the RetinaNet configs here (``fork_last3=True``);
  a file that has it loads into such a model with ``norm0`` dropped; a
  model that needs ``norm0`` refuses a file without it.
* ``meta``: ``CLASSES`` / ``PALETTE`` become ``dataset_meta``; the
  ``optimizer`` (and apex ``amp``) state is dropped.
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from .io import read_checkpoint, save_checkpoint_file
from .loading import list_problems
from .safe_load import CheckpointError

StateDict = Dict[str, torch.Tensor]

# (pattern, replacement) per source library, applied to whole-model keys
# outside the backbone. Empty on purpose: see the module docstring for the
# files compared. Add a rule only with the source lines that prove it.
HEAD_RENAMES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    'mmdet 2.x': (),
    'mmseg 0.x': (),
    'mmcv 1.x': (),
}
# top-level entries of an mmcv 1.x checkpoint that a model does not load
_TRAINING_STATE = ('optimizer', 'amp')


@dataclass
class WholeModelReport:
    """What :func:`convert_whole_model` did to a file."""
    source: str
    renamed: List[Tuple[str, str]] = field(default_factory=list)
    dropped: List[Tuple[str, str]] = field(default_factory=list)
    left_at_init: List[Tuple[str, str]] = field(default_factory=list)
    meta: List[str] = field(default_factory=list)
    loaded: int = 0

    def summary(self, name: str = 'checkpoint') -> str:
        lines = [f'Converted {name} ({self.source}): {self.loaded} tensors '
                 f'load, {len(self.renamed)} renamed.']
        for old, new in self.renamed:
            lines.append(f'  renamed {old} -> {new}')
        for key, why in self.dropped:
            lines.append(f'  dropped {key}: {why}')
        for key, why in self.left_at_init:
            lines.append(f'  left at init {key}: {why}')
        for line in self.meta:
            lines.append(f'  meta: {line}')
        return '\n'.join(lines)


def _version(meta: dict, key: str) -> Optional[str]:
    value = meta.get(key)
    return str(value) if value is not None else None


def identify(checkpoint) -> Optional[str]:
    """The library that wrote a whole-model ``checkpoint`` when it is a
    foreign one (``'mmdet 2.x'``, ``'mmseg 0.x'``, ``'mmcv 1.x'``), or None
    (mmengine's Runner, i.e. this package's tools, or not a whole model)."""
    if not isinstance(checkpoint, dict):
        return None
    meta = checkpoint.get('meta')
    if not isinstance(meta, dict):
        return None
    if 'mmengine_version' in meta or 'dataset_meta' in meta:
        return None
    mmdet, mmseg = _version(meta, 'mmdet_version'), _version(meta,
                                                             'mmseg_version')
    if mmdet and mmdet.startswith('2.'):
        return 'mmdet 2.x'
    if mmseg and mmseg.startswith('0.'):
        return 'mmseg 0.x'
    mmcv = _version(meta, 'mmcv_version')
    if (mmcv and mmcv.startswith('1.')) or 'CLASSES' in meta:
        return 'mmcv 1.x'
    return None


def _inner_model(model):
    """The detector / segmentor itself (inside DDP or a TTA wrapper)."""
    while not hasattr(model, 'backbone') and hasattr(model, 'module'):
        model = model.module
    return model


def _backbone_renames(model, state_dict: StateDict, report: WholeModelReport
                      ) -> StateDict:
    """Rename the ``backbone.`` part into the backbone's own layout (its
    ``checkpoint_layout``), recording each rename."""
    layout = getattr(getattr(model, 'backbone', None), 'checkpoint_layout',
                     None)
    part = OrderedDict((k[len('backbone.'):], v) for k, v in state_dict.items()
                       if k.startswith('backbone.'))
    if layout is None or not part:
        return state_dict
    try:
        converted, found = layout.to_model(part)
    except CheckpointError as error:
        raise CheckpointError(
            f'The backbone part of this {report.source} file is in no '
            f'layout {layout.family} knows: {error}') from error
    if found != layout.model_layout:
        report.source += f', backbone in the {found} layout'
    if list(converted) != list(part):
        if len(converted) != len(part):
            raise CheckpointError(
                f'Renaming the {found} backbone changed the number of '
                f'tensors ({len(part)} -> {len(converted)}).')
        report.renamed += [('backbone.' + old, 'backbone.' + new)
                           for old, new in zip(part, converted) if old != new]
    out = OrderedDict((k, v) for k, v in state_dict.items()
                      if not k.startswith('backbone.'))
    out.update(('backbone.' + k, v) for k, v in converted.items())
    return out


def _check_backbone(model, state_dict: StateDict, own: StateDict,
                    source: str):
    """Refuse a file whose backbone does not fit: another arch (shapes or
    blocks differ) or, for a model that outputs ``norm0``, a RetinaNet file
    trained with ``FORK_LAST3=1``."""
    backbone = getattr(model, 'backbone', None)
    layout = getattr(backbone, 'checkpoint_layout', None)
    prefix = 'backbone.'
    missing = [k for k in own if k.startswith(prefix) and k not in state_dict]
    extra = [k for k in state_dict if k.startswith(prefix) and k not in own
             and not (layout and layout.ignorable.match(k[len(prefix):]))]
    mismatched = [f'{k}: file {tuple(state_dict[k].shape)} vs model '
                  f'{tuple(v.shape)}' for k, v in own.items()
                  if k.startswith(prefix) and k in state_dict
                  and state_dict[k].shape != v.shape]
    if not (missing or extra or mismatched):
        return
    name = layout.model_name(backbone) if layout else type(backbone).__name__
    what = ''
    if layout is not None:
        part = {k[len(prefix):]: v for k, v in state_dict.items()
                if k.startswith(prefix)}
        try:
            what = f' The file\'s backbone looks like {layout.describe(part)}.'
        except Exception:  # noqa: BLE001 - only a description
            what = ''
    problems = list_problems(mismatched, missing, extra, 'backbone weights')
    if missing and all(re.match(r'backbone\.norm0\.', k) for k in missing):
        problems.append('the file was trained with FORK_LAST3=1 (RetinaNet; '
                        'no norm0): load it into a model with '
                        'model.backbone.fork_last3=True')
    raise CheckpointError(
        f'This {source} checkpoint does not fit the model\'s backbone '
        f'{name}.{what} ' + '; '.join(problems) + '. Pick the config of '
        'the same arch; nothing was loaded.')


def convert_whole_model(checkpoint: dict, model,
                        source: Optional[str] = None
                        ) -> Tuple[dict, WholeModelReport]:
    """``checkpoint`` (a foreign whole model, see :func:`identify`) as
    ``model`` (the detector / segmentor, possibly wrapped) loads it:
    ``{'state_dict': ..., 'meta': ...}`` with mmengine's ``dataset_meta``.

    The backbone must fit (else :class:`CheckpointError`); weights of the
    file the model lacks are dropped, and model weights the file lacks or
    has in another shape (a head for other classes) are left at their
    initial values; all of it is in the report."""
    source = source or identify(checkpoint) or 'a whole model'
    report = WholeModelReport(source=source)
    state_dict = checkpoint.get('state_dict', checkpoint.get('model'))
    if not isinstance(state_dict, dict):
        raise CheckpointError(
            f'This {source} checkpoint holds no state_dict (top-level keys: '
            f'{list(checkpoint)[:8]}); nothing was loaded.')
    state_dict = OrderedDict((k, v) for k, v in state_dict.items()
                             if isinstance(v, torch.Tensor))
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = OrderedDict((k[len('module.'):], v)
                                 for k, v in state_dict.items())
    for pattern, replacement in HEAD_RENAMES.get(source.split(',')[0], ()):
        renamed = OrderedDict()
        for key, value in state_dict.items():
            new = re.sub(pattern, replacement, key)
            if new != key:
                report.renamed.append((key, new))
            renamed[new] = value
        state_dict = renamed
    model = _inner_model(model)
    state_dict = _backbone_renames(model, state_dict, report)
    own = model.state_dict()
    _check_backbone(model, state_dict, own, source)
    kept = OrderedDict()
    for key, value in state_dict.items():
        if key not in own:
            why = ('not in this model (fork_last3=True: level 0 is unused)'
                   if key.startswith('backbone.norm0.') else
                   'not in this model')
            report.dropped.append((key, why))
        elif own[key].shape != value.shape:
            report.left_at_init.append(
                (key, f'shape {tuple(value.shape)} in the file, '
                      f'{tuple(own[key].shape)} in the model'))
        else:
            kept[key] = value
    report.left_at_init += [(k, 'not in the file') for k in own
                            if k not in state_dict]
    kept = OrderedDict((k, kept[k]) for k in own if k in kept)
    report.loaded = len(kept)
    meta = dict(checkpoint.get('meta') or {})
    dataset_meta = {}
    for old, new in (('CLASSES', 'classes'), ('PALETTE', 'palette')):
        if meta.get(old) is not None:
            dataset_meta[new] = meta.pop(old)
            report.meta.append(f'{old} -> dataset_meta.{new}')
    if dataset_meta:
        meta['dataset_meta'] = dataset_meta
    meta['converted_from'] = source
    dropped = [k for k in _TRAINING_STATE if k in checkpoint]
    if dropped:
        report.meta.append(f'dropped the training state {dropped} (load_from '
                           'only; --resume takes files of tools/train.py)')
    converted = {k: v for k, v in checkpoint.items()
                 if k not in ('state_dict', 'model', 'meta')
                 and k not in _TRAINING_STATE}
    converted.update(state_dict=kept, meta=meta)
    return converted, report


def needs_conversion(checkpoint, model) -> Optional[str]:
    """The source to convert from when ``checkpoint`` is a foreign whole
    model, or a whole model whose backbone is in another layout than the
    model's backbone loads; else None."""
    source = identify(checkpoint)
    if source is not None:
        return source
    state_dict = checkpoint.get('state_dict') if isinstance(
        checkpoint, dict) else None
    layout = getattr(getattr(_inner_model(model), 'backbone', None),
                     'checkpoint_layout', None)
    if not isinstance(state_dict, dict) or layout is None:
        return None
    part = {k[len('backbone.'):]: v for k, v in state_dict.items()
            if k.startswith('backbone.')}
    if not part:
        return None
    try:
        found = layout.detect(part)
    except CheckpointError:
        return None
    return None if found == layout.model_layout else 'a whole model'


def convert_whole_model_file(source: str, destination: str, model,
                             weights_only: bool = True) -> WholeModelReport:
    """Read ``source`` (path or URL), convert it for ``model`` and write
    ``{'state_dict': ..., 'meta': ...}`` to ``destination``, a file that
    ``tools/test.py``, ``load_from`` and mmdet's ``init_detector`` / mmseg's
    ``init_model`` load with ``weights_only=True``."""
    checkpoint = read_checkpoint(source, weights_only)
    converted, report = convert_whole_model(
        checkpoint, model, needs_conversion(checkpoint, model))
    meta = converted['meta']
    plain = {'dataset_meta': meta.get('dataset_meta', {}),
             'converted_from': f'{meta["converted_from"]}: {source}'}
    save_checkpoint_file(
        {'state_dict': converted['state_dict'], 'meta': plain}, destination)
    return report
