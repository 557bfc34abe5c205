"""pytest set-up: eight CPU devices (fixed before JAX initializes) and absl
flags marked parsed, so absltest helpers such as `create_tempdir` work."""

import os

from absl import flags

# Limits OpenBLAS threads before a test module loads SciPy (see its docstring).
import distillation  # pylint: disable=unused-import

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
flags.FLAGS.mark_as_parsed()
