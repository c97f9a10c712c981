"""Load a backbone's pretrained weights from a file of any layout its
family knows, with a report; convert files between layouts.

The backbone calls :func:`load_pretrained` once from ``init_weights``; the
model's ``checkpoint_layout`` (a :class:`~.layouts.CheckpointLayout`) says
how its family's files look.
"""
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log

from .io import read_checkpoint, save_checkpoint_file
from .layouts import CheckpointLayout
from .safe_load import CheckpointError

StateDict = Dict[str, torch.Tensor]


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


def extract_state_dict(ckpt, prefix: Optional[str] = None
                       ) -> Tuple[StateDict, int]:
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


def list_problems(mismatched: List[str], missing: List[str],
                  unexpected: List[str], weights: str = 'weights'
                  ) -> List[str]:
    """One phrase per kind of difference between a file and a model, with
    up to three examples each; ``weights`` names the model's weights
    ('of 120 model weights', 'backbone weights')."""
    problems = []
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatches, e.g. '
                        + '; '.join(mismatched[:3]))
    if missing:
        problems.append(f'{len(missing)} {weights} missing from the file, '
                        f'e.g. {missing[:3]}')
    if unexpected:
        problems.append(f'{len(unexpected)} file weights the model does '
                        f'not have, e.g. {unexpected[:3]}')
    return problems


def match_state_dict(model, state_dict: StateDict,
                     layout: Optional[CheckpointLayout] = None
                     ) -> Tuple[List[str], List[str]]:
    """Check that ``state_dict`` (in the model's layout) fits ``model``.

    Returns (fresh, ignored): the model keys left at their init because the
    file lacks them (only those the layout allows, e.g. output norms), and
    the file keys the model does not use. Any other difference raises
    :class:`CheckpointError`.
    """
    layout = layout or model.checkpoint_layout
    own = model.state_dict()
    fresh = [k for k in own if k not in state_dict]
    ignored = [k for k in state_dict if k not in own]
    missing = [k for k in fresh if not layout.fresh_ok.match(k)]
    unexpected = [k for k in ignored if not layout.ignorable.match(k)]
    mismatched = [f'{k}: checkpoint {tuple(state_dict[k].shape)} vs model '
                  f'{tuple(v.shape)}' for k, v in own.items()
                  if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        problems = list_problems(mismatched, missing, unexpected,
                                 f'of {len(own)} model weights')
        problems += layout.hints(model, missing)
        raise CheckpointError(
            f'Checkpoint does not fit {layout.model_name(model)}: the file '
            f'looks like {layout.describe(state_dict)}. '
            + '; '.join(problems) + '. Pick the matching `arch` or the right '
            'checkpoint; nothing was loaded.')
    return fresh, ignored


def load_pretrained(model, checkpoint: str, prefix: Optional[str] = None,
                    weights_only: bool = True,
                    map_location='cpu') -> LoadReport:
    """Load ``checkpoint`` into a backbone and log a report.

    Args:
        model: The backbone; its ``checkpoint_layout`` says which layouts
            its family's files come in.
        checkpoint: Local path or http(s) URL.
        prefix: Take only keys under this prefix (stripped). Default: the
            ``backbone.`` part when the file holds a whole model.
        weights_only: Passed to ``torch.load``; set False only for trusted
            files that pickle other Python objects (old mmdet metadata).

    Raises:
        CheckpointError: if the file does not fit; nothing is loaded then.
    """
    layout = model.checkpoint_layout
    raw = read_checkpoint(checkpoint, weights_only, map_location)
    state_dict, dropped = extract_state_dict(raw, prefix)
    state_dict, found = layout.to_model(state_dict)
    fresh, ignored = match_state_dict(model, state_dict, layout)
    usable = {k: v for k, v in state_dict.items() if k not in ignored}
    model.load_state_dict(usable, strict=False)
    report = LoadReport(source=checkpoint, layout=found,
                        loaded=sorted(usable), fresh=fresh, ignored=ignored,
                        dropped_prefixed=dropped)
    print_log(report.summary(layout.model_name(model)), logger='current')
    return report


def convert_checkpoint(source: str, destination: str,
                       layout: CheckpointLayout, to: Optional[str] = None,
                       prefix: Optional[str] = None,
                       weights_only: bool = True) -> Tuple[str, int]:
    """Write the backbone in ``source`` (any layout ``layout`` knows) as a
    bare state dict in the layout ``to`` (default: the model's). Returns
    the layout found and the number of tensors written."""
    raw = read_checkpoint(source, weights_only)
    state_dict, _ = extract_state_dict(raw, prefix)
    found = layout.detect(state_dict)
    state_dict = layout.convert(state_dict, to or layout.model_layout)
    save_checkpoint_file(OrderedDict(state_dict), destination)
    return found, len(state_dict)
