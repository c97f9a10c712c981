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
         '--out', str(tmp_path)], capture_output=True, text=True,
        timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / 'cuda_check.json').read_text())
    assert result['failures'] == []
    paths = [r['path'] for r in result['inference']]
    assert paths[0] == 'official eager'
    assert {'project plain eager', 'project deploy eager (folded)',
            'project deploy eager (conv)', 'official torch.compile',
            'project compile=True', 'project deploy + compile'} <= set(paths)
    variants = [r['variant'] for r in result['training']]
    assert variants == ['official', 'plain', 'with_cp', 'with_cp_full',
                        'compile', 'official_compile', 'with_cp_compile']
    for row in result['inference'] + result['training']:
        assert 'error' not in row, row
    table = (tmp_path / 'cuda_check.md').read_text()
    assert '| official eager |' in table and '| with_cp |' in table
    assert table in proc.stdout
