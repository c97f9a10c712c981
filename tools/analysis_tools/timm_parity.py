"""Parity of the backbones with timm's MetaFormer models, in one run.

For each of timm's 18 MetaFormer models (``poolformer_s12/s24/s36/m36/m48``,
the PoolFormer v1 of the seed paper; ``poolformerv2_s12/s24/s36/m36/m48``,
``convformer_s18/s36/m36/b36``, ``caformer_s18/s36/m36/b36``) it checks,
against ``timm.models.metaformer`` itself:

1. **Loading**: ``timm.create_model(name, pretrained=False)`` (nothing is
   downloaded), seed fixed, with every 1-D parameter perturbed by small
   random values (norm weights/biases, res scales, StarReLU scale/bias,
   conv/linear biases: all-ones norms and zero biases would hide swapped
   parameters). Its ``state_dict()`` is saved as timm writes it and loaded
   through the public path: ``PoolFormer`` / ``PoolFormerV2`` /
   ``ConvFormer`` / ``CAFormer`` ``(arch=..., init_cfg=dict(type=
   'Pretrained', checkpoint=FILE))`` then ``.init_weights()``. The load
   report must say timm layout, every tensor loaded, nothing fresh or
   ignored (classifier) / only the output norms fresh and only the
   classifier ignored (dense); independently, the model's state dict must
   hold exactly the file's tensors (PoolFormer: after renaming to the
   official layout, which that backbone uses), plus the output norms at
   weight 1, bias 0 in dense mode.
2. **Logits** (``fork_feat=False``: timm's classifier, ConvFormer/CAFormer's
   MLP head included) on a random 2x3x224x224 batch and a 1x3x193x257 image:
   ``max|ours - timm| / max|timm| < --tol`` (1e-4). PoolFormer v1 keeps the
   official classifier, which normalizes the whole last feature map (one-
   group GroupNorm, eps 1e-5) before pooling, where timm pools first and
   then normalizes with the same weights: its reference logits are timm's
   ``forward_features`` through the official head in ``torch.nn.functional``
   ops (timm's own logits, which differ by design, are recorded too).
3. **Dense features** (``fork_feat=True``, the default) against timm's
   ``features_only=True`` model loaded with the same weights (its keys are
   the file's without ``head.*``; timm's FeatureListNet flattens the stage
   list, ``stages.0.`` -> ``stages_0.``, which is mapped). Compared per stage
   at 2x3x224x224 and 1x3x241x317: (a) our pre-norm stage features, taken
   by stand-ins for the output norms (``norm0-3``; PoolFormer's
   ``norm0/2/4/6``: the exact tensors the stages hand to them), against
   timm's features; (b) our returned outputs against timm's features
   through ``F.layer_norm`` over channels with our norm's weight and bias
   (eps 1e-6; PoolFormer: ``F.group_norm`` with one group, eps 1e-5). Both
   under ``--tol``.
4. **Parameter counts**: ours (dense) == timm features_only
   + 2 * sum(embed_dims) (the output norms' weights and biases); ours
   (classifier) == timm's full model.

Everything runs in fp32 with TF32 off, models in eval mode. Each model is
built once per mode (the m36/b36 builds on the CPU dominate the run) and
checked in its own try/except: a failure is recorded in its row and the
others still run. A markdown table is printed and written with the
details to ``DIR/timm_parity.md`` and ``DIR/timm_parity.json`` (torch and
timm versions, device, date). Exit status: 0 all rows pass, 1 a row
failed, 2 timm cannot be imported.

It needs torch, timm (which imports torchvision), mmengine and mmcv
without its compiled ops; not mmdet/mmseg. On a CPU machine whose torch
has no matching torchvision, a separate environment does (about 6 GB: the
CUDA build of torch, which runs on the CPU; 2026-11-27, 2 cores of an AMD
EPYC: 51 s to install from a local wheel cache, 58 s to run)::

    python -m venv work_dirs/timm_env
    work_dirs/timm_env/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        timm==1.0.29 mmengine==0.10.7 mmcv-lite==2.1.0
    PYTHONPATH=. work_dirs/timm_env/bin/python \\
        tools/analysis_tools/timm_parity.py --out work_dirs/timm_parity

On the GPU machine (timm installed), with pure-Python copies of mmengine
and mmcv in ``.gpu_site``::

    PYTHONPATH=.gpu_site:. python tools/analysis_tools/timm_parity.py \\
        --out $OUT

Options: ``--models convformer_s18,caformer_s18`` (a subset), ``--device``
(default cuda when available, else cpu), ``--tol``, ``--seed``, ``--out``
(default ``$OUT`` or ``.``).
"""
import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
import traceback

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# timm name -> (our class, arch)
MODELS = {
    **{f'poolformer_{a}': ('PoolFormer', a)
       for a in ('s12', 's24', 's36', 'm36', 'm48')},
    **{f'poolformerv2_{a}': ('PoolFormerV2', a)
       for a in ('s12', 's24', 's36', 'm36', 'm48')},
    **{f'convformer_{a}': ('ConvFormer', a)
       for a in ('s18', 's36', 'm36', 'b36')},
    **{f'caformer_{a}': ('CAFormer', a)
       for a in ('s18', 's36', 'm36', 'b36')},
}
LOGIT_SIZES = dict(std=(2, 3, 224, 224), odd=(1, 3, 193, 257))
DENSE_SIZES = dict(std=(2, 3, 224, 224), odd=(1, 3, 241, 317))
PERTURB = 0.1  # std of the noise added to every 1-D parameter


def _layer_norm_nchw(x, weight, bias):
    """timm's LayerNorm2d (the MetaFormer baselines' output norms)."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1], ), weight, bias,
                        1e-6).permute(0, 3, 1, 2)


def _group_norm1(x, weight, bias):
    """The official PoolFormer's output norm: GroupNorm with one group."""
    return F.group_norm(x, 1, weight, bias, 1e-5)


def _official_names(state_dict: dict) -> dict:
    from mmpoolformer.checkpoint.layouts.poolformer import timm_to_official
    return timm_to_official(state_dict)


# How each of our backbone families differs here: its output norms' names,
# the classifier's keys (as the model names them), the output norm's math,
# and the key layout the model uses for a timm file.
FAMILIES = dict(
    metaformer=dict(norms=tuple(f'norm{i}' for i in range(4)),
                    classifier=('head.', ), out_norm=_layer_norm_nchw,
                    model_keys=lambda state_dict: state_dict),
    poolformer=dict(norms=tuple(f'norm{i}' for i in (0, 2, 4, 6)),
                    classifier=('norm.', 'head.'), out_norm=_group_norm1,
                    model_keys=_official_names),
)


def family(cls_name: str) -> dict:
    return FAMILIES['poolformer' if cls_name == 'PoolFormer' else
                    'metaformer']


def official_head_logits(ref, x: torch.Tensor, state_dict: dict):
    """The official PoolFormer classifier on timm's features: one-group
    GroupNorm over the last map, global average, linear."""
    def param(key):
        return state_dict[key].to(x.device)

    feats = _group_norm1(ref.forward_features(x), param('head.norm.weight'),
                         param('head.norm.bias'))
    return F.linear(feats.mean((-2, -1)), param('head.fc.weight'),
                    param('head.fc.bias'))


def import_timm():
    """timm, or exit 2 with one line saying why."""
    try:
        import timm
        import timm.models.metaformer  # noqa: F401
    except Exception as exc:  # ImportError, or a torch/timm mismatch
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
        print(f'cannot import timm ({type(exc).__name__}: {msg}); run '
              'this where `import timm` works (timm 1.0.x): the docstring '
              'of tools/analysis_tools/timm_parity.py makes such an '
              'environment', file=sys.stderr)
        sys.exit(2)
    return timm


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours - ref| / max|ref| (inf on a shape mismatch)."""
    if ours.shape != ref.shape:
        return float('inf')
    ours, ref = ours.detach().double(), ref.detach().double()
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)
            ).item()


def perturb(model: torch.nn.Module, generator: torch.Generator) -> int:
    """Add N(0, PERTURB^2) noise to every 1-D parameter; returns how many
    tensors were changed."""
    count = 0
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(torch.randn(p.shape, generator=generator) * PERTURB)
                count += 1
    return count


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def build_ours(cls, arch: str, fork_feat: bool, checkpoint: str):
    """Our backbone through the public path; returns it and the load
    report (logged to mmengine's current logger: captured there and kept
    off the console)."""
    from mmengine.logging import MMLogger
    model = cls(arch=arch, fork_feat=fork_feat, fork_last3=False,
                init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
    logger = MMLogger.get_current_instance()
    capture, saved, level = _Capture(), logger.handlers[:], logger.level
    logger.handlers[:] = [capture]
    logger.setLevel(logging.INFO)  # a fresh MMLogger defers to root's
    try:
        model.init_weights()
    finally:
        logger.handlers[:] = saved
        logger.setLevel(level)
    # mmengine's own init_weights logs its parameter table first; keep the
    # load report (load_pretrained's one message)
    reports = [m for m in capture.lines
               if re.search(r': loaded \d+ tensors from ', m)]
    return model, '\n'.join(reports)


class _Tap(torch.nn.Module):
    """Stands in for an output norm: keeps its input (the stage feature),
    then normalizes it as the backbone does. (A forward pre-hook would miss
    PoolFormer's one-group GroupNorms, which run through ``apply_norm``'s
    functional path, not the module's call.)"""

    def __init__(self, norm: torch.nn.Module, store: dict, index: int):
        super().__init__()
        self.norm, self.store, self.index = norm, store, index

    def forward(self, x):
        from mmpoolformer.models.layers.norms import apply_norm
        self.store[self.index] = x
        return apply_norm(self.norm, x)


@contextlib.contextmanager
def tapped_norms(model: torch.nn.Module, names):
    """``model`` with its output norms ``names`` replaced by :class:`_Tap`
    stand-ins (put back on exit); yields {stage index: that norm's input}
    of the last forward."""
    store, norms = {}, [getattr(model, name) for name in names]
    for i, (name, norm) in enumerate(zip(names, norms)):
        setattr(model, name, _Tap(norm, store, i))
    try:
        yield store
    finally:
        for name, norm in zip(names, norms):
            setattr(model, name, norm)


def report_modules(report: str, label: str) -> list:
    """Module names listed on the report line starting with ``label``."""
    for line in report.splitlines():
        if line.strip().startswith(label):
            return [m.strip() for m in line.split('): ', 1)[1].split(',')]
    return []


def check_load(model, state_dict: dict, report: str, dense: bool,
               spec: dict, layout: str = 'timm') -> list:
    """Problems (empty: fine) of the load: report and tensors (``layout``:
    what the report must call the file's layout)."""
    problems = []
    state_dict = spec['model_keys'](state_dict)
    file_keys = set(state_dict)
    head = {k for k in file_keys if k.startswith(spec['classifier'])}
    norms = {f'{n}.{p}' for n in spec['norms'] for p in ('weight', 'bias')}
    expected = (file_keys - head) | norms if dense else file_keys
    own = model.state_dict()
    missing, extra = sorted(expected - set(own)), sorted(set(own) - expected)
    if missing or extra:
        problems.append(f'model keys differ from the file: missing '
                        f'{missing[:4]}, extra {extra[:4]}')
    differ = [k for k in sorted(file_keys & set(own))
              if not torch.equal(own[k].cpu(), state_dict[k].cpu())]
    if differ:
        problems.append(f'{len(differ)} tensors differ from the file, e.g. '
                        f'{differ[:4]}')
    if dense:
        bad = [k for k in sorted(norms & set(own)) if not torch.equal(
            own[k], torch.full_like(own[k], 1. if k.endswith('weight')
                                    else 0.))]
        if bad:
            problems.append(f'output norms not at weight 1 / bias 0: {bad}')
    n_loaded = len(file_keys - head) if dense else len(file_keys)
    first = report.splitlines()[0] if report else ''
    if f'loaded {n_loaded} tensors' not in first or \
            f'({layout} layout)' not in first:
        problems.append(f'load report says {first!r}, expected "loaded '
                        f'{n_loaded} tensors ... ({layout} layout)"')
    fresh = report_modules(report, 'initialised fresh')
    ignored = report_modules(report, 'ignored')
    want_fresh = list(spec['norms']) if dense else []
    if fresh != want_fresh:
        problems.append(f'report: fresh {fresh}, expected {want_fresh}')
    in_classifier = [any(f'{m}.'.startswith(p) for p in spec['classifier'])
                     for m in ignored]
    if (dense and not (ignored and all(in_classifier))) or \
            (not dense and ignored):
        problems.append(f'report: ignored {ignored}, expected '
                        f'{"the classifier only" if dense else "nothing"}')
    return problems


def feature_key(key: str, feature_keys: set) -> str:
    """A timm model key as timm's features_only model names it
    (FeatureListNet with flatten_sequential: ``stages.0.`` ->
    ``stages_0.``)."""
    if key in feature_keys:
        return key
    return re.sub(r'^(\w+)\.(\d+)\.', r'\1_\2.', key)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def record_logits(row: dict, key: str, shape, err: float, tol: float):
    """Record the logits' error at input ``key``; a problem when over tol."""
    row[f'logits_{key}'] = err
    if not err < tol:
        row['problems'].append(f'logits {tuple(shape)}: rel err {err:.3g}')


def record_dense(row: dict, key: str, shape, outs, pre: dict, refs,
                 norms, spec: dict, tol: float):
    """Record our dense outputs against the reference stage features
    ``refs``: per stage, our output norms' inputs (``pre``, from
    :func:`tapped_norms`) against the feature, and our outputs against the
    feature through the same norm; a problem for each stage over tol."""
    errs = [dict(stage=i, shape=list(ref.shape),
                 pre_norm=rel_err(pre[i], ref),
                 output=rel_err(out, spec['out_norm'](
                     ref, norms[i].weight, norms[i].bias)))
            for i, (out, ref) in enumerate(zip(outs, refs))]
    if len(outs) != 4 or len(refs) != 4:
        row['problems'].append(f'dense {tuple(shape)}: {len(outs)} outputs, '
                               f'reference {len(refs)}')
    row[f'dense_{key}_stages'] = errs
    row[f'dense_{key}'] = max(
        [max(e['pre_norm'], e['output']) for e in errs] or [float('inf')])
    for e in errs:
        if not max(e['pre_norm'], e['output']) < tol:
            row['problems'].append(
                f'dense {tuple(shape)} stage {e["stage"]}: pre-norm '
                f'{e["pre_norm"]:.3g}, output {e["output"]:.3g}')


def check_model(timm, name: str, args, device: torch.device,
                tmpdir: str) -> dict:
    import mmpoolformer.models as ours_models
    cls_name, arch = MODELS[name]
    cls = getattr(ours_models, cls_name)
    spec = family(cls_name)
    row = dict(model=name, ours=f'{cls_name}(arch={arch!r})', ok=False,
               problems=[])
    start = time.perf_counter()
    tol = args.tol
    gen = torch.Generator().manual_seed(args.seed)
    inputs = {k: torch.randn(s, generator=gen) for k, s in
              list(LOGIT_SIZES.items()) + [('dense_odd', DENSE_SIZES['odd'])]}
    inputs['dense_std'] = inputs['std']

    # ---- classifier: load timm's file, compare logits
    torch.manual_seed(args.seed)
    ref = timm.create_model(name, pretrained=False)
    row['perturbed_tensors'] = perturb(ref, gen)
    state_dict = ref.state_dict()  # kept on the CPU for check_load
    path = os.path.join(tmpdir, f'{name}.pth')
    torch.save(state_dict, path)
    row['file_tensors'] = len(state_dict)
    ours, report = build_ours(cls, arch, False, path)
    row['report_classifier'] = report
    row['problems'] += [f'classifier load: {p}' for p in
                        check_load(ours, state_dict, report, False, spec)]
    row['params_timm'] = n_params(ref)
    row['params_ours_classifier'] = n_params(ours)
    if row['params_ours_classifier'] != row['params_timm']:
        row['problems'].append(
            f'classifier params {row["params_ours_classifier"]} != timm '
            f'{row["params_timm"]}')
    row['seconds_build_classifier'] = round(time.perf_counter() - start, 1)
    ref.eval().to(device)
    ours.eval().to(device)
    with torch.no_grad():
        for key in LOGIT_SIZES:
            x = inputs[key].to(device)
            logits, timm_logits = ours(x), ref(x)
            if spec is FAMILIES['poolformer']:
                row[f'logits_timm_head_{key}'] = rel_err(logits, timm_logits)
                timm_logits = official_head_logits(ref, x, state_dict)
            record_logits(row, key, x.shape, rel_err(logits, timm_logits),
                          tol)
    del ref, ours
    gc.collect()

    # ---- dense: timm features_only vs our dense backbone
    mark = time.perf_counter()
    torch.manual_seed(args.seed)
    feat = timm.create_model(name, pretrained=False, features_only=True)
    fkeys = set(feat.state_dict())
    usable = {feature_key(k, fkeys): v for k, v in state_dict.items()}
    left_out = [k for k in state_dict if feature_key(k, fkeys) not in fkeys]
    usable = {k: v for k, v in usable.items() if k in fkeys}
    result = feat.load_state_dict(usable, strict=False)
    row['timm_features_left_out'] = sorted(
        {k.rsplit('.', 1)[0] for k in left_out})
    not_head = [k for k in left_out if not k.startswith('head.')]
    if result.missing_keys or result.unexpected_keys or not_head:
        row['problems'].append(
            f'timm features_only load: missing {result.missing_keys[:4]}, '
            f'unexpected {result.unexpected_keys[:4]}, left out that are '
            f'not head.* {not_head[:4]}')
    ours, report = build_ours(cls, arch, True, path)
    row['report_dense'] = report
    row['problems'] += [f'dense load: {p}' for p in
                        check_load(ours, state_dict, report, True, spec)]
    dims = ours.embed_dims
    row['params_timm_features'] = n_params(feat)
    row['params_ours_dense'] = n_params(ours)
    want = row['params_timm_features'] + 2 * sum(dims)
    if row['params_ours_dense'] != want:
        row['problems'].append(
            f'dense params {row["params_ours_dense"]} != timm features '
            f'{row["params_timm_features"]} + 2*sum{tuple(dims)} = {want}')
    row['seconds_build_dense'] = round(time.perf_counter() - mark, 1)
    feat.eval().to(device)
    ours.eval().to(device)
    norms = [getattr(ours, name) for name in spec['norms']]
    with tapped_norms(ours, spec['norms']) as pre, torch.no_grad():
        for key in DENSE_SIZES:
            x = inputs[f'dense_{key}'].to(device)
            pre.clear()
            record_dense(row, key, x.shape, ours(x), pre, feat(x), norms,
                         spec, tol)
    del feat, ours
    os.remove(path)
    gc.collect()
    row['ok'] = not row['problems']
    row['seconds'] = round(time.perf_counter() - start, 1)
    return row


def fmt_err(value) -> str:
    return '-' if value is None else f'{value:.1e}'


def table(rows: list, params_header: str = 'timm features_only / ours',
          params_keys=('params_timm_features', 'params_ours_dense')) -> str:
    lines = ['| model | logits max rel err 224 / odd | dense max rel err '
             f'224 / odd | params {params_header} | ok |',
             '|---|---|---|---|---|']
    for r in rows:
        params = (' / '.join(f'{r[k]:,}' for k in params_keys)
                  if all(k in r for k in params_keys) else '-')
        problems = [r['error']] if r.get('error') else r['problems']
        status = 'yes' if r['ok'] else 'NO: ' + problems[0][:150].replace(
            '|', '/') + (f' (+{len(problems) - 1} more, see the json)'
                         if len(problems) > 1 else '')
        lines.append(
            f'| {r["model"]} | {fmt_err(r.get("logits_std"))} / '
            f'{fmt_err(r.get("logits_odd"))} | '
            f'{fmt_err(r.get("dense_std"))} / '
            f'{fmt_err(r.get("dense_odd"))} | {params} | {status} |')
    return '\n'.join(lines)


def run_all(names, check, device: torch.device, prefix: str,
            meta: dict) -> list:
    """``check(name, tmpdir)`` for each name, each in its own try/except
    (a failure becomes its row); prints one line per model and puts the
    total time in ``meta['seconds']``."""
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmpdir:
        for name in names:
            try:
                row = check(name, tmpdir)
            except Exception as exc:
                row = dict(model=name, ok=False, problems=[],
                           error=f'{type(exc).__name__}: {exc}',
                           traceback=traceback.format_exc())
            rows.append(row)
            print(f'  {name}: {"ok" if row["ok"] else "FAILED"} '
                  f'({row.get("seconds", "-")} s)', flush=True)
            if not row['ok']:
                print('    ' + (row.get('error')
                                or '; '.join(row['problems'])), flush=True)
            gc.collect()
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    meta['seconds'] = round(time.perf_counter() - start, 1)
    return rows


def fp32_device(requested=None):
    """The device to check on (default: cuda if available) with TF32 off,
    and its name."""
    device = torch.device(requested or (
        'cuda' if torch.cuda.is_available() else 'cpu'))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision('highest')
    name = (torch.cuda.get_device_name(device) if device.type == 'cuda' else
            platform.processor() or platform.machine() or 'cpu')
    return device, name


def run_meta(timm, device, device_name: str, args, **extra) -> dict:
    """What a report records of its run: date, versions, device, settings
    (plus ``extra``)."""
    return dict(
        date=datetime.datetime.now().astimezone().isoformat(
            timespec='seconds'),
        torch=torch.__version__, timm=timm.__version__,
        python=platform.python_version(), device=str(device),
        device_name=device_name, dtype='float32', tf32=False,
        seed=args.seed, tol=args.tol, perturb_std=PERTURB, **extra)


def add_common_options(parser: argparse.ArgumentParser, models: dict,
                       report: str):
    """The options both parity tools take."""
    parser.add_argument('--models', default=','.join(models),
                        help='comma-separated model names (default: all '
                        f'{len(models)})')
    parser.add_argument('--device', default=None,
                        help='default: cuda if available, else cpu')
    parser.add_argument('--out', default=os.environ.get('OUT') or '.',
                        help=f'folder for {report}.json/.md '
                        '(default: $OUT or .)')
    parser.add_argument('--tol', type=float, default=1e-4,
                        help='max relative error (default 1e-4)')
    parser.add_argument('--seed', type=int, default=0)


def parse_models(parser: argparse.ArgumentParser, argv, models: dict):
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(',') if m.strip()]
    unknown = [m for m in args.models if m not in models]
    if unknown:
        parser.error(f'unknown models {unknown}; choose from '
                     f'{", ".join(models)}')
    return args


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Parity of PoolFormer/PoolFormerV2/ConvFormer/CAFormer '
        "with timm's MetaFormer models (logits, dense features, loading, "
        'parameter counts).')
    add_common_options(parser, MODELS, 'timm_parity')
    return parse_models(parser, argv, MODELS)


def main(argv=None) -> int:
    args = parse_args(argv)
    timm = import_timm()
    device, device_name = fp32_device(args.device)
    import mmpoolformer  # noqa: F401  (registers; mmdet/mmseg optional)

    meta = run_meta(
        timm, device, device_name, args,
        logit_sizes=LOGIT_SIZES, dense_sizes=DENSE_SIZES,
        dense_compare='pre-norm stage features (the output norms\' '
        'inputs, taken by stand-ins) vs timm features_only; and outputs '
        'vs timm features through F.layer_norm over channels (eps 1e-6; '
        'PoolFormer: F.group_norm, one group, eps 1e-5) with our norm '
        'weight/bias',
        poolformer_logits='official head (GroupNorm before pooling) on timm '
        'forward_features; timm\'s own head in logits_timm_head_*')
    print(f'timm_parity: torch {meta["torch"]}, timm {meta["timm"]}, '
          f'{device} ({device_name}), {len(args.models)} models',
          flush=True)
    rows = run_all(
        args.models,
        lambda name, tmpdir: check_model(timm, name, args, device, tmpdir),
        device, 'timm_parity_', meta)

    md = '\n'.join([
        f'# timm MetaFormer parity ({meta["date"]})', '',
        f'torch {meta["torch"]}, timm {meta["timm"]}, Python '
        f'{meta["python"]}, {device} ({device_name}); fp32, TF32 off; '
        f'tolerance {args.tol:g} (max|ours - timm| / max|timm|); every 1-D '
        f'parameter perturbed (std {PERTURB:g}); logits at '
        f'{" and ".join("x".join(map(str, s)) for s in LOGIT_SIZES.values())}'
        f', dense at '
        f'{" and ".join("x".join(map(str, s)) for s in DENSE_SIZES.values())}'
        f' (worst stage of: pre-norm features, the output norms\' '
        f'inputs, and outputs vs timm features through the same norm); '
        f'PoolFormer logits: the official head (GroupNorm before pooling) '
        f'on timm\'s features; params: ours dense = timm features_only + '
        f'2 * sum(embed_dims). '
        f'{meta["seconds"]} s.', '', table(rows), ''])
    return report(args.out, 'timm_parity', md, meta, rows)


def report(out: str, stem: str, md: str, meta: dict, rows: list) -> int:
    """Finish ``md`` with the pass count, print it, write ``stem``.md and
    .json to ``out``; the exit status (1 if a row failed)."""
    failed = meta['failed'] = [r['model'] for r in rows if not r['ok']]
    md += (f'\n{len(rows) - len(failed)}/{len(rows)} passed'
           + (f'; failed: {", ".join(failed)}' if failed else '') + '.\n')
    print()
    print(md)
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f'{stem}.{ext}') for ext in ('json', 'md')]
    with open(paths[0], 'w') as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    with open(paths[1], 'w') as f:
        f.write(md)
    print(f'written: {paths[0]}, {paths[1]}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
