import os
import sys

# tests import their helpers (reference_poolformer, ...) by plain name
sys.path.insert(0, os.path.dirname(__file__))
# Keep the suite's parallel processes from oversubscribing the cores.
os.environ.setdefault('OMP_NUM_THREADS', '1')
