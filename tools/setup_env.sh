#!/usr/bin/env bash
# Install everything mmpoolformer needs into the current Python environment:
# torch (an installed one is kept, so a CUDA build survives), mmengine, mmcv
# 2.1.0 compiled with its ops (CUDA ops too where torch and nvcc have CUDA),
# mmdet 3.3, mmsegmentation 1.2.2 (+ the packages they forget to declare),
# this package in editable mode, and the test requirements (openmim too).
#
# Idempotent: every step is skipped when what it installs is already there,
# so on a set-up machine this takes seconds and never rebuilds mmcv.
#
#   bash tools/setup_env.sh            # uses `python3` (or $PYTHON)
set -euo pipefail

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}   # only used when torch is missing
MMCV_VERSION=2.1.0                        # newest mmdet 3.3 / mmseg 1.2 accept
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pip_install() { "$PYTHON" -m pip install --disable-pip-version-check -q "$@"; }
# checks run from / so that a package in the current folder cannot pass them
has() { (cd / && "$PYTHON" - "$@") >/dev/null 2>&1; }
step() { printf '[setup_env %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

step "python: $("$PYTHON" --version 2>&1) at $(command -v "$PYTHON")"

if has <<<'import torch'; then
  step "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') already installed: kept"
else
  step "installing torch==$TORCH_VERSION"
  pip_install "torch==$TORCH_VERSION"
fi

# Build helpers for mmcv; checked first so a set-up machine skips pip.
if ! has <<'EOF'
import importlib.metadata as md, pkg_resources, wheel, ninja
major = int(md.version('setuptools').split('.')[0])
assert 77 <= major < 81
EOF
then
  step "installing build helpers (setuptools<81 with pkg_resources, wheel, ninja)"
  pip_install -r "$ROOT/requirements/build.txt"
fi

if ! has <<<'import mmengine; assert mmengine.__version__.startswith("0.10")'; then
  step "installing mmengine"
  pip_install "mmengine==0.10.7"
fi

MMCV_CHECK="import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'"
if has <<<"$MMCV_CHECK"; then
  step "mmcv $MMCV_VERSION with ops already installed: not rebuilt"
else
  jobs=$(nproc 2>/dev/null || echo 2)
  step "compiling mmcv $MMCV_VERSION with ops on $jobs cores (about 11 min on 2 cores; pip caches the wheel)"
  MMCV_WITH_OPS=1 MAX_JOBS=$jobs pip_install --no-build-isolation "mmcv==$MMCV_VERSION"
  has <<<"$MMCV_CHECK" || { echo "mmcv.ops does not import after the build" >&2; exit 1; }
fi

if has "$ROOT" <<'EOF'
import importlib.metadata as md
import mmdet, mmseg, ftfy, regex, pycocotools, pytest, mmpoolformer
assert md.version('mmdet').startswith('3.3') and md.version('mmsegmentation').startswith('1.2')
# editable install of *this* checkout
import os, sys
assert os.path.realpath(os.path.dirname(mmpoolformer.__file__)) == os.path.realpath(sys.argv[1] + '/mmpoolformer')
EOF
then
  step "mmdet, mmseg and mmpoolformer (editable, this checkout) already installed"
else
  step "installing mmdet, mmsegmentation and mmpoolformer (editable)"
  pip_install -e "$ROOT[all,tests]"
fi
# The test requirements (pytest, onnx, openmim, ...), checked line by line
# against requirements/tests.txt, so that a line added there is installed by
# the next run on a set-up machine too.
if has "$ROOT/requirements/tests.txt" <<'EOF'
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for line in open(sys.argv[1]):
    line = line.split('#')[0].strip()
    if line:
        requirement = Requirement(line)
        assert requirement.specifier.contains(version(requirement.name),
                                              prereleases=True), line
EOF
then
  step "test requirements (requirements/tests.txt) already installed"
else
  step "installing the test requirements (requirements/tests.txt)"
  pip_install -r "$ROOT/requirements/tests.txt"
fi
step "ready: $("$PYTHON" -c 'import torch, mmcv, mmdet, mmseg, mmengine, mmpoolformer as m; print(f"torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmpoolformer {m.__version__}")')"
