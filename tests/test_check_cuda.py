"""tools/check_cuda.py (the one GPU script of issue 12) runs end to end on
the CPU with --dry-run: tiny arch and sizes, aot_eager compile."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_check_cuda_dry_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'check_cuda.py'), '--dry-run',
         '--out', str(tmp_path), '--profile', 'official,compile'],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / 'cuda_check.json').read_text())
    assert result['failures'] == []
    paths = [r['path'] for r in result['inference']]
    assert paths[0] == 'official eager'
    assert {'project plain eager', 'project plain eager, native GroupNorm',
            'project deploy eager (folded)', 'project deploy eager (conv)',
            'official torch.compile', 'project compile=True',
            'project compile=True, CUDA graphs',
            'project deploy + compile'} <= set(paths)
    variants = [r['variant'] for r in result['training']]
    assert variants[:2] == ['official', 'plain']
    assert {'native', 'with_cp', 'with_cp_full', 'compile',
            'cudagraphs_compile', 'official_compile',
            'with_cp_compile',
            'convpool_apartbias_rowsgrad_cudagraphs_compile'} <= set(variants)
    for row in result['inference'] + result['training']:
        assert 'error' not in row, row
    # both GroupNorm formulations agree, torch's checkpointing changes no
    # bit, the hand-written recompute only the order of sums
    grads = result['training_max_rel_grad_diff']
    assert grads['stats'] < 1e-3 and grads['stats_sac_with_cp'] == 0
    assert grads['stats_with_cp'] < 1e-4
    # the profiled rows say how busy the device was per step
    profiled = {r['variant']: r for r in result['training']
                if 'profiled_kernel_ms_per_step' in r}
    assert set(profiled) == {'official', 'compile'}
    assert '## compile (2 steps)' in (tmp_path / 'profiles.txt').read_text()
    table = (tmp_path / 'cuda_check.md').read_text()
    assert '| official eager |' in table and '| with_cp |' in table
    assert table in proc.stdout
