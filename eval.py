"""Tests a distilled set: `python eval.py --workdir=DIR [--out=FILE.json]
[--export=FILE.npz] [--step=N]`.

Fits the inner model on the distilled images of the best (config.eval.select
says by what: docs/evaluation.md) or latest checkpoint, and baselines of the
same size, prints their test accuracy and loss, and writes them to
DIR/eval.json (or --out). The
evaluators of config.eval.nets also train networks from scratch on each set.
The checkpoint's config says how, unless --config is given, e.g.
`--config=configs/default.py --config.eval.nets=linear,convnet
--config.eval.net_preset=cpu`: then its eval section does, and --out keeps
DIR/eval.json as it is.
"""

import json
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from distillation import cli
from distillation import errors
from distillation import eval_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The workdir train.py wrote.')
flags.DEFINE_string('out', None, 'Write the result (JSON) here instead of '
                    'to the workdir\'s eval.json: a new file, or an earlier '
                    'result of eval.py.')
flags.DEFINE_string('export', None,
                    'Also save the distilled images and labels to this .npz.')
flags.DEFINE_enum('checkpoint', 'best', ['best', 'latest'],
                  'best: the set config.eval.select picks (the best '
                  'checkpoint by the inner model\'s validation accuracy, or '
                  'by networks\' among step 0 and kept checkpoints); latest: '
                  'the newest checkpoint.')
flags.DEFINE_integer('step', None, 'Test this step of the latest '
                     'checkpoints instead (config.max_checkpoints_to_keep '
                     'says how many are kept), e.g. for a compute curve.')
flags.DEFINE_bool('baselines', True, 'Also fit random real images, class '
                  'means and the full training split, for comparison.')
config_flags.DEFINE_config_file(
    'config', None, 'Optional: a config whose eval section replaces the '
    "checkpoint's.", lock_config=True)
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv  # cli.parse_flags refuses positional arguments.
  try:
    result = eval_lib.evaluate(
        FLAGS.workdir, FLAGS.export, FLAGS.checkpoint, FLAGS.baselines,
        FLAGS.config.eval if FLAGS.config else None, out=FLAGS.out,
        step=FLAGS.step)
  except errors.UserError as e:
    sys.exit(f'ERROR: {e}')
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
