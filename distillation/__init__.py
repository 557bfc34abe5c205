"""Dataset distillation by bi-level optimization with implicit differentiation.

On import, OpenBLAS is limited to one thread unless OPENBLAS_NUM_THREADS is
set: jaxlib's CPU LAPACK kernels call it through SciPy, and its idle worker
threads keep spinning after each call, competing with XLA's threads for the
cores, while the solves made here are small. SciPy loads OpenBLAS at JAX's
first LAPACK call, after this.
"""

import os

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
