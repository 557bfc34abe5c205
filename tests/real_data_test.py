"""Real data: Fashion-MNIST end to end (slow: a few minutes on 2 cores).

Needs Fashion-MNIST as idx files: set FASHION_MNIST_IDX_DIR, or install the
Debian package dataset-fashion-mnist. Skips, saying so, when neither is there.
"""

import json
import os
import shutil
import subprocess

from absl.testing import absltest

from tests import end_to_end_test

_FILES = ('train-images-idx3-ubyte.gz', 't10k-images-idx3-ubyte.gz')


def find_fashion_mnist() -> str | None:
  """The directory of the Fashion-MNIST idx files, or None."""
  candidates = [os.environ.get('FASHION_MNIST_IDX_DIR', '')]
  if shutil.which('dpkg'):
    listing = subprocess.run(['dpkg', '-L', 'dataset-fashion-mnist'],
                             capture_output=True, text=True).stdout
    candidates += [os.path.dirname(p) for p in listing.split()
                   if p.endswith(_FILES[0])]
  for directory in candidates:
    if directory and all(os.path.isfile(os.path.join(directory, f))
                         for f in _FILES):
      return directory
  return None


@absltest.skipUnless(find_fashion_mnist(), 'Fashion-MNIST idx files not found:'
                     ' set FASHION_MNIST_IDX_DIR or apt-get install '
                     'dataset-fashion-mnist')
class FashionMnistTest(absltest.TestCase):

  def test_seed_setting_reaches_seed_accuracy(self):
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    code, last, _ = end_to_end_test.run(
        'train.py', '--config=configs/fashion_mnist.py', f'--workdir={workdir}',
        f'--config.data.idx_dir={find_fashion_mnist()}')
    self.assertEqual(code, 0, last)
    code, last, _ = end_to_end_test.run('eval.py', f'--workdir={workdir}',
                                        '--checkpoint=latest', '--nobaselines')
    self.assertEqual(code, 0, last)
    with open(os.path.join(workdir, 'eval.json')) as f:
      result = json.load(f)
    self.assertEqual(result['step'], 100)
    self.assertGreaterEqual(result['test_accuracy'], 0.79)

  def test_learned_labels_and_l2reg_beat_the_seed_ceiling(self):
    """One image per class, learned labels and l2reg: > 83%, above the
    seed's ceiling, already after 300 of the config's 1000 steps."""
    workdir = os.path.join(self.create_tempdir().full_path, 'run')
    code, last, _ = end_to_end_test.run(
        'train.py', '--config=configs/linear.py:fashion_mnist,ipc=1',
        f'--workdir={workdir}', f'--config.data.idx_dir={find_fashion_mnist()}',
        '--config.num_steps=300')
    self.assertEqual(code, 0, last)
    code, last, _ = end_to_end_test.run('eval.py', f'--workdir={workdir}',
                                        '--nobaselines')
    self.assertEqual(code, 0, last)
    with open(os.path.join(workdir, 'eval.json')) as f:
      result = json.load(f)
    self.assertEqual(result['checkpoint'], 'best')
    self.assertGreater(result['test_accuracy'], 0.83)


if __name__ == '__main__':
  absltest.main()
