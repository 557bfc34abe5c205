"""pytest set-up: eight CPU devices (fixed before JAX initializes) and absl
flags marked parsed, so absltest helpers such as `create_tempdir` work."""

import os

from absl import flags

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
flags.FLAGS.mark_as_parsed()
