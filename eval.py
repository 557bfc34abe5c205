"""Tests a distilled set: `python eval.py --workdir=DIR [--export=FILE.npz]`.

Fits the inner model on the distilled images of the best (by validation
accuracy) or latest checkpoint, and baselines of the same size, prints their
test accuracy and loss, and writes them to DIR/eval.json.
"""

import json
import sys

from absl import app
from absl import flags

from distillation import cli
from distillation import errors
from distillation import eval_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The workdir train.py wrote.')
flags.DEFINE_string('export', None,
                    'Also save the distilled images and labels to this .npz.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'],
                  'The best checkpoint by validation accuracy, or the latest.')
flags.DEFINE_bool('baselines', True, 'Also fit random real images, class '
                  'means and the full training split, for comparison.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = eval_lib.evaluate(FLAGS.workdir, FLAGS.export, FLAGS.checkpoint,
                               FLAGS.baselines)
  except errors.UserError as e:
    sys.exit(f'ERROR: {e}')
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
