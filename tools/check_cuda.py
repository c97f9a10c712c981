"""Check the backbone's paths on a CUDA GPU: equivalence and speed.

The CPU test suite cannot reach CUDA; run this on a GPU machine:

    python tools/check_cuda.py [--out cuda_check.json]

It checks, for every arch at odd input sizes, the deploy (folded) path and
channels_last against the plain path in fp32, bf16 autocast's cosine
similarity per level, with_cp gradients, and times S12 at 3x800x1216.
Exits non-zero if an equivalence check fails.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmpoolformer.benchmark import compare, randomized  # noqa: E402
from mmpoolformer.models import ARCH_SETTINGS, PoolFormer  # noqa: E402


def cuda_time(fn, warmup=3, repeats=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def check_equivalence(arch, size, failures):
    plain = randomized(PoolFormer(arch)).cuda().eval()
    fast = randomized(PoolFormer(arch)).cuda().eval()
    fast.switch_to_deploy()
    x = torch.randn(2, 3, *size, device='cuda')
    with torch.no_grad():
        ref = plain(x)
        deploy = fast(x)
        cl = plain.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))
        with torch.autocast('cuda', dtype=torch.bfloat16):
            bf16 = fast(x)
    row = dict(arch=arch, size=list(size), deploy=compare(ref, deploy),
               channels_last=compare(ref, cl), deploy_bf16=compare(ref, bf16))
    if row['deploy']['max_rel'] > 1e-4:
        failures.append(f'{arch} {size}: deploy differs beyond 1e-4')
    if row['channels_last']['max_rel'] > 1e-4:
        failures.append(f'{arch} {size}: channels_last differs beyond 1e-4')
    if row['deploy_bf16']['min_cosine'] < 0.999:
        failures.append(f'{arch} {size}: bf16 cosine below 0.999')
    return row


def check_with_cp(failures):
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = randomized(PoolFormer('s12', with_cp=with_cp,
                                      drop_path_rate=0.1)).cuda().train()
        x = torch.randn(2, 3, 129, 161, device='cuda')
        torch.manual_seed(1)
        sum(o.float().square().mean() for o in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    worst = max((grads[0][n] - grads[1][n]).abs().max().item()
                for n in grads[0])
    if worst > 1e-5:
        failures.append(f'with_cp gradients differ by {worst}')
    return worst


def timings():
    rows = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, 800, 1216, device='cuda')
        plain = randomized(PoolFormer('s12')).cuda().eval()
        fast = randomized(PoolFormer('s12')).cuda().eval().switch_to_deploy()
        xcl = x.contiguous(memory_format=torch.channels_last)
        paths = dict(
            plain=lambda: plain(x),
            deploy=lambda: fast(xcl),
            plain_bf16=lambda: _autocast(plain, x),
            deploy_bf16=lambda: _autocast(fast, xcl))
        with torch.no_grad():
            for name, fn in paths.items():
                rows.append(dict(batch=batch, path=name,
                                 ms=1000 * cuda_time(fn)))
    return rows


def _autocast(model, x):
    with torch.autocast('cuda', dtype=torch.bfloat16):
        return model(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='cuda_check.json')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('error: no CUDA device visible to torch')
    # fp32 means fp32 here: TF32 convolutions would blur the comparison.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    failures = []
    result = dict(device=torch.cuda.get_device_name(),
                  torch=torch.__version__, equivalence=[])
    for arch in ARCH_SETTINGS:
        for size in ((225, 333), (97, 131)):
            result['equivalence'].append(
                check_equivalence(arch, size, failures))
    result['with_cp_max_grad_diff'] = check_with_cp(failures)
    result['timings'] = timings()
    result['failures'] = failures
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    for row in result['timings']:
        print(f"batch {row['batch']} {row['path']:12s} {row['ms']:8.2f} ms")
    print('failures:', failures or 'none')
    sys.exit(1 if failures else 0)


if __name__ == '__main__':
    main()
