"""pytest set-up: eight CPU devices (fixed before JAX initializes), absl
flags marked parsed, so absltest helpers such as `create_tempdir` work, and
compilation made cheap: unoptimized, and one persistent cache for the run.

The tests build many Distillers of the same few configs, in this process and
in the train.py/eval.py processes they start; each Distiller's programs are
new Python closures, so without the cache each one is compiled again. The
cache is keyed by the program, its compile options and the jaxlib version,
so it cannot change a result; it lives in a fresh directory per run, which
the subprocesses inherit through the environment, and is removed at exit.
"""

import atexit
import importlib.metadata
import os
import re
import shutil
import tempfile

from absl import flags

# Limits OpenBLAS threads before a test module loads SciPy (see its docstring).
import distillation  # pylint: disable=unused-import

# The tests' programs are small and many: LLVM's optimizations would cost
# more compile time than they save at run time. Results do not depend on it
# beyond float rounding, which no test relies on.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0')
# XLA's older CPU emitters compile these programs in about three quarters of
# the time. The flag is internal: a jaxlib that does not know it refuses to
# start, so it is set only for the jaxlib that requirements.txt pins.
with open(os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'requirements.txt')) as _requirements:
  _PINNED = re.search(r'^jax==(\S+)', _requirements.read(), re.M)
if _PINNED and importlib.metadata.version('jaxlib') == _PINNED.group(1):
  os.environ['XLA_FLAGS'] += ' --xla_cpu_use_fusion_emitters=false'
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='distillation_tests_jax_cache_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  # Cache every program: most are small, and a load is cheaper than a compile.
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
flags.FLAGS.mark_as_parsed()
