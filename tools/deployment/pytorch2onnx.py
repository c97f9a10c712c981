"""Export the backbone (or the whole Semantic FPN segmentor) to ONNX.

    python tools/deployment/pytorch2onnx.py CONFIG --shape H W \\
        --out FILE.onnx [--checkpoint CKPT] [--whole] [--check-shape H W]

Exports with torch's TorchScript-based exporter (``dynamo=False``, opset
17), batch, height and width dynamic; checks the file with
``onnx.checker``; runs it with onnxruntime on random inputs at the export
shape (batch 1) and at ``--check-shape`` (batch 2) and prints the largest
absolute and relative difference to PyTorch for every output (relative:
max |onnx - torch| / max |torch|). Exits with status 1 if a relative
difference reaches ``--rtol`` (1e-4).

The input is the normalized batch that the config's data preprocessor
makes (mean/std and channel order are printed, not part of the graph).
The backbone returns its stage outputs (``stage0``..``stage3``);
``--whole`` (mmseg configs) returns the decode head's logits upsampled to
the input size (``logits``), as ``EncoderDecoder.encode_decode`` does.
Without ``--checkpoint`` the weights are fresh and nothing downloads.
Needs ``pip install onnx onnxruntime`` (the ``export`` extra).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
from mmpoolformer.analysis import (  # noqa: E402
    SegmentorLogits, build_backbone, build_model, compare_onnx, export_onnx,
    model_config)


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='mmdet or mmseg config file')
    parser.add_argument('--checkpoint', help='weights: a checkpoint of the '
                        'whole model (tools/train.py) or, for the backbone, '
                        'an ImageNet one; default: fresh weights')
    parser.add_argument('--shape', type=int, nargs=2, required=True,
                        metavar=('H', 'W'), help='export input size')
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument('--whole', action='store_true',
                        help='export the whole segmentor (mmseg '
                        'EncoderDecoder), not only the backbone')
    parser.add_argument(
        '--check-shape', type=int, nargs=2, metavar=('H', 'W'),
        help='second input size onnxruntime is checked at (default: '
        'H+32, W+64), to show height and width are dynamic')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--rtol', type=float, default=1e-4,
                        help='largest relative difference accepted')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    args = parser.parse_args(argv)
    if min(args.shape) < 32:
        parser.error('--shape: height and width must be at least 32')
    if args.whole and any(s % 32 for s in args.shape + (
            args.check_shape or [])):
        parser.error('--whole: height and width must be multiples of 32 '
                     '(the FPN head upsamples each level by 2)')
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = model_config(args.config, args.cfg_options)
    if args.whole:
        if cfg.default_scope != 'mmseg' or \
                cfg.model.type != 'EncoderDecoder':
            sys.exit(f'--whole exports mmseg EncoderDecoder segmentors; '
                     f'{args.config} builds {cfg.model.type} '
                     f'({cfg.default_scope}). Export its backbone without '
                     '--whole, or use mmdeploy for detectors.')
        model, cfg = build_model(cfg, args.checkpoint)
        module, names = SegmentorLogits(model).eval(), ['logits']
        what = f'{cfg.model.type} (backbone, neck, decode head, upsampling)'
    else:
        module, cfg = build_backbone(cfg, args.checkpoint)
        names = [f'stage{i}' for i in module.out_indices]
        what = f'{type(module).__name__}(arch={module.arch!r}) backbone'
    shape = tuple(args.shape)
    check = tuple(args.check_shape or (shape[0] + 32, shape[1] + 64))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    export_onnx(module, shape, args.out, names, args.opset)
    weights = args.checkpoint or 'fresh weights'
    print(f'{args.out}: {what} from {args.config} ({weights}), opset '
          f'{args.opset}, input 1x3x{shape[0]}x{shape[1]}, dynamic batch, '
          f'height and width; onnx.checker passed')
    pre = cfg.model.get('data_preprocessor') or {}
    print(f"input: normalized {'RGB' if pre.get('bgr_to_rgb') else 'BGR'} "
          f"images, (pixel - {list(pre.get('mean', [0, 0, 0]))}) / "
          f"{list(pre.get('std', [1, 1, 1]))}")
    rows = compare_onnx(module, args.out, [(1, ) + shape, (2, ) + check],
                        names)
    print(f'{"input":18}{"output":9}{"shape":20}{"max abs diff":>14}'
          f'{"max rel diff":>14}')
    for row in rows:
        print(f'{"x".join(map(str, row["input"])):18}{row["output"]:9}'
              f'{"x".join(map(str, row["shape"])):20}'
              f'{row["max_abs"]:>14.2e}{row["max_rel"]:>14.2e}')
    worst = max(row['max_rel'] for row in rows)
    if worst >= args.rtol:
        sys.exit(f'FAILED: onnxruntime differs from PyTorch by {worst:.2e} '
                 f'(relative), not below {args.rtol:g}')
    print(f'OK: onnxruntime matches PyTorch (max relative difference '
          f'{worst:.2e} < {args.rtol:g})')


if __name__ == '__main__':
    main()
