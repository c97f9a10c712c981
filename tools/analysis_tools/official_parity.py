"""Parity of the MetaFormer-baselines backbones with the official code.

timm has no IdentityFormer or RandFormer; the official repository
(github.com/sail-sg/metaformer) has all five families in one file,
``metaformer_baselines.py``, which this script takes as ``--code`` (none of
that code is in this repository). For each of its 23 ImageNet-1K models
(``identityformer_*``, ``randformer_*`` and ``poolformerv2_*`` s12-m48,
``convformer_*`` and ``caformer_*`` s18-b36) it checks:

1. **Loading**: the official model from the file's own function (seed
   fixed), every 1-D parameter perturbed (std 0.1), its ``state_dict()``
   saved as the official code writes it (``downsample_layers.N``,
   ``stages.N.M``, ``norm``, ``head``) and loaded through ``init_cfg=dict(
   type='Pretrained', checkpoint=FILE)``. The load report must say official
   layout, every tensor loaded, nothing fresh or ignored (classifier) /
   only ``norm0-3`` fresh and only the classifier ignored (dense); the
   model's tensors must be the file's, renamed to timm's layout (the one
   the backbones use).
2. **Logits** (``fork_feat=False``) at 2x3x224x224 and 1x3x193x257
   (RandFormer at 224 only: its token-mixing matrices are sized for 224
   px): ``max|ours - official| / max|official| < --tol``. The official
   ConvFormer/CAFormer MLP head normalizes with ``nn.LayerNorm`` (eps
   1e-5), timm's with eps 1e-6, and the backbones build timm's classifier:
   the reference's head eps is set to 1e-6 for the check; the logits
   against the official eps are recorded (``logits_official_eps_*``).
3. **Dense features**: the official model's stage outputs (its
   ``downsample_layers`` and ``stages`` in turn; NHWC there, permuted)
   against our output norms' inputs, and our outputs against those
   features through ``F.layer_norm`` over channels with our norms' weights
   (eps 1e-6).
4. **Parameter counts**: ours (classifier) == the official model; ours
   (dense) == the official model without ``norm``/``head`` + 2 *
   sum(embed_dims).

The official file imports timm (0.6-era names; ``timm.models.layers.
helpers``, gone from timm 1.0, is aliased to ``timm.layers`` in this
process), so run it where timm imports (an environment for that:
``timm_parity.py``'s docstring)::

    git clone https://github.com/sail-sg/metaformer /tmp/metaformer
    PYTHONPATH=. python tools/analysis_tools/official_parity.py \\
        --code /tmp/metaformer/metaformer_baselines.py --out work_dirs/parity

Writes ``official_parity.md`` and ``.json`` to ``--out``. Exit status: 0
all rows pass, 1 a row failed, 2 timm or the file cannot be imported.
"""
import argparse
import gc
import importlib.util
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import timm_parity as tp  # noqa: E402  (the shared checks; adds the repo)

ARCHS = dict(
    IdentityFormer=('s12', 's24', 's36', 'm36', 'm48'),
    RandFormer=('s12', 's24', 's36', 'm36', 'm48'),
    PoolFormerV2=('s12', 's24', 's36', 'm36', 'm48'),
    ConvFormer=('s18', 's36', 'm36', 'b36'),
    CAFormer=('s18', 's36', 'm36', 'b36'),
)
# official function name -> (our class, arch)
MODELS = {f'{cls.lower()}_{arch}': (cls, arch)
          for cls, archs in ARCHS.items() for arch in archs}
SIZES = dict(std=(2, 3, 224, 224), odd=(1, 3, 193, 257))
TIMM_HEAD_EPS = 1e-6


def load_official(path: str):
    """The official ``metaformer_baselines.py`` as a module, or exit 2."""
    tp.import_timm()
    import timm.layers
    sys.modules.setdefault('timm.models.layers.helpers', timm.layers)
    try:
        spec = importlib.util.spec_from_file_location('metaformer_baselines',
                                                      path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # timm's register_model looks it up
        spec.loader.exec_module(module)
    except Exception as exc:
        print(f'official_parity: cannot import {path} ({type(exc).__name__}:'
              f' {exc}); pass metaformer_baselines.py of '
              'github.com/sail-sg/metaformer', file=sys.stderr)
        sys.exit(2)
    return module


def official_stages(ref, x: torch.Tensor) -> list:
    """The official model's four stage outputs, NCHW."""
    feats = []
    for down, stage in zip(ref.downsample_layers, ref.stages):
        x = stage(down(x))
        feats.append(x.permute(0, 3, 1, 2))
    return feats


def official_logits(ref, x: torch.Tensor, head_eps=None) -> torch.Tensor:
    """The official logits, with the MLP head's LayerNorm eps set to
    ``head_eps`` for the call (None: the official one)."""
    norm = getattr(ref.head, 'norm', None)
    if head_eps is None or norm is None:
        return ref(x)
    saved, norm.eps = norm.eps, head_eps
    try:
        return ref(x)
    finally:
        norm.eps = saved


def compare(row: dict, ours, ref, x: torch.Tensor, key: str, dense: bool,
            spec: dict, tol: float):
    if not dense:
        logits = ours(x)
        if getattr(ref.head, 'norm', None) is not None:
            row[f'logits_official_eps_{key}'] = tp.rel_err(logits, ref(x))
        tp.record_logits(row, key, x.shape, tp.rel_err(
            logits, official_logits(ref, x, TIMM_HEAD_EPS)), tol)
        return
    norms = [getattr(ours, name) for name in spec['norms']]
    with tp.tapped_norms(ours, spec['norms']) as pre:
        outs = ours(x)
    tp.record_dense(row, key, x.shape, outs, pre, official_stages(ref, x),
                    norms, spec, tol)


def check_model(module, name: str, args, device: torch.device,
                tmpdir: str) -> dict:
    import mmpoolformer.models as ours_models
    from mmpoolformer.checkpoint.layouts.metaformer import official_to_timm
    cls_name, arch = MODELS[name]
    cls = getattr(ours_models, cls_name)
    spec = dict(tp.FAMILIES['metaformer'], model_keys=official_to_timm)
    row = dict(model=name, ours=f'{cls_name}(arch={arch!r})', ok=False,
               problems=[])
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    sizes = {k: s for k, s in SIZES.items()
             if k == 'std' or cls_name != 'RandFormer'}
    inputs = {k: torch.randn(s, generator=gen) for k, s in sizes.items()}
    torch.manual_seed(args.seed)
    ref = getattr(module, name)()
    row['perturbed_tensors'] = tp.perturb(ref, gen)
    state_dict = ref.state_dict()
    path = os.path.join(tmpdir, f'{name}.pth')
    torch.save(state_dict, path)
    row['file_tensors'] = len(state_dict)
    row['params_official'] = tp.n_params(ref)
    classifier = sum(p.numel() for part in (ref.norm, ref.head)
                     for p in part.parameters())
    ref.eval().to(device)
    for dense in (False, True):
        mode = 'dense' if dense else 'classifier'
        ours, report = tp.build_ours(cls, arch, dense, path)
        row[f'report_{mode}'] = report
        row['problems'] += [f'{mode} load: {p}' for p in tp.check_load(
            ours, state_dict, report, dense, spec, layout='official')]
        params = row[f'params_ours_{mode}'] = tp.n_params(ours)
        want = (row['params_official'] - classifier +
                2 * sum(ours.embed_dims) if dense else row['params_official'])
        if params != want:
            row['problems'].append(f'{mode} params {params} != {want}')
        ours.eval().to(device)
        with torch.no_grad():
            for key, x in inputs.items():
                compare(row, ours, ref, x.to(device), key, dense, spec,
                        args.tol)
        del ours
        gc.collect()
    os.remove(path)
    row['ok'] = not row['problems']
    row['seconds'] = round(time.perf_counter() - start, 1)
    return row


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Parity of IdentityFormer/RandFormer/PoolFormerV2/'
        'ConvFormer/CAFormer with the official sail-sg/metaformer code.')
    parser.add_argument('--code', required=True,
                        help='metaformer_baselines.py of sail-sg/metaformer')
    tp.add_common_options(parser, MODELS, 'official_parity')
    return tp.parse_models(parser, argv, MODELS)


def main(argv=None) -> int:
    args = parse_args(argv)
    module = load_official(args.code)
    device, device_name = tp.fp32_device(args.device)
    import mmpoolformer  # noqa: F401  (registers)
    import timm
    meta = tp.run_meta(timm, device, device_name, args,
                       code=os.path.abspath(args.code), sizes=SIZES,
                       head_eps=TIMM_HEAD_EPS)
    print(f'official_parity: torch {meta["torch"]}, timm {meta["timm"]}, '
          f'{device} ({device_name}), {len(args.models)} models', flush=True)
    rows = tp.run_all(
        args.models,
        lambda name, tmpdir: check_model(module, name, args, device, tmpdir),
        device, 'official_parity_', meta)
    md = '\n'.join([
        f'# Parity with the official MetaFormer code ({meta["date"]})', '',
        f'torch {meta["torch"]}, timm {meta["timm"]}, {device} '
        f'({device_name}); fp32, TF32 off; '
        f'tolerance {args.tol:g} (max|ours - official| / max|official|); '
        f'every 1-D parameter perturbed (std {tp.PERTURB:g}); inputs 224 '
        f'and 193x257 (RandFormer 224 only); MLP heads compared at timm\'s '
        f'LayerNorm eps {TIMM_HEAD_EPS:g}. {meta["seconds"]} s.', '',
        tp.table(rows, 'official / ours (classifier)',
                 ('params_official', 'params_ours_classifier')), ''])
    return tp.report(args.out, 'official_parity', md, meta, rows)


if __name__ == '__main__':
    sys.exit(main())
