"""Tests a distilled set: `python eval.py --workdir=DIR [--export=FILE.npz]`.

Fits the inner model on the newest checkpoint's distilled images, prints its
test accuracy and loss, and writes them to DIR/eval.json.
"""

import json
import sys

from absl import app
from absl import flags

from distillation import errors
from distillation import eval_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The workdir train.py wrote.')
flags.DEFINE_string('export', None,
                    'Also save the distilled images and labels to this .npz.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = eval_lib.evaluate(FLAGS.workdir, FLAGS.export)
  except errors.UserError as e:
    sys.exit(f'ERROR: {e}')
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
