"""Distills a dataset.

  python train.py --config=configs/default.py --workdir=DIR

Any config field can be overridden, e.g. `--config.inner.l2reg=0.01`. Running
the same command again resumes from the newest checkpoint in DIR. With
`--multihost`, run the same command on every host of a multi-process job.
"""

import os
import signal
import sys

from distillation import errors  # The standard library's modules only.


def _stop_at_once(signum, frame):
  del signum, frame
  print(errors.STOPPED, file=sys.stderr, flush=True)
  os._exit(0)  # pylint: disable=protected-access


# A scheduler may stop a job at any moment, even during the imports below,
# which take seconds; train_lib installs its own handler once it starts.
signal.signal(signal.SIGTERM, _stop_at_once)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from ml_collections import config_flags

from distillation import cli
from distillation import parallel
from distillation import train_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None,
                    'Directory for checkpoints, metrics and images.')
flags.DEFINE_bool(
    'multihost', False, 'Join a multi-process run (jax.distributed); the three '
    'flags below are detected where JAX can, e.g. on TPU VMs.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for --multihost.')
flags.DEFINE_integer('num_processes', None,
                     'Processes in all, for --multihost.')
flags.DEFINE_integer('process_id', None, 'This process, 0-based, for '
                     '--multihost.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv  # cli.parse_flags refuses positional arguments.
  if FLAGS.multihost:
    parallel.initialize_multihost(FLAGS.coordinator_address,
                                  FLAGS.num_processes, FLAGS.process_id)
  try:
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.UserError as e:
    sys.exit(f'ERROR: {e}')
  except errors.Stopped as e:
    print(e, file=sys.stderr)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
