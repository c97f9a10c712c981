"""Benchmark every PoolFormer execution path against the plain backbone.

    python tools/benchmark.py [--arch s12] [--quick] [--out FILE.json] ...

Times are only meaningful with the cores to yourself (nothing else running).
See :mod:`mmpoolformer.benchmark` for what is measured and how.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mmpoolformer.benchmark import main  # noqa: E402

if __name__ == '__main__':
    main()
