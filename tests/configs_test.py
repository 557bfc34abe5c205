"""Tests that every config loads, is valid, and can be overridden."""

import glob
import os

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
import jax
from ml_collections import config_flags
import tensorflow_datasets as tfds

from distillation import input_pipeline
from distillation import outer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "[!_]*.py"))
                 if not p.endswith("common.py"))


def parse(*args):
  """Parses a command line as train.py does."""
  argv = ['train.py', *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config',
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


class ConfigsTest(parameterized.TestCase):

  @parameterized.parameters(*CONFIGS)
  def test_config_is_valid(self, path):
    config = parse(f'--config={path}')
    distiller = outer.Distiller(config)
    self.assertGreaterEqual(distiller.num_distilled, 10)

  @parameterized.parameters(('fashion_mnist_conv_ipc1_cpu', 784),
                            ('cifar10_conv_ipc1_cpu', 3072))
  def test_tfds_conv_configs_load_and_start(self, name, num_pixels):
    # ZCA of CIFAR-10's 3072 pixels (an eigendecomposition of that size) is
    # tested on digits in input_pipeline_test instead.
    config = parse(f'--config={ROOT}/configs/{name}.py',
                   '--config.data.validation_size=10',
                   '--config.data.zca=False')
    with tfds.testing.mock_data(num_examples=100):
      train, _ = input_pipeline.load_train_and_validation(config.data)
    self.assertAlmostEqual(float(train.images.mean()), 0.0, places=4)
    state = outer.Distiller(config).init_state(jax.random.PRNGKey(0), train)
    self.assertEqual(state.params['images'].shape, (10, num_pixels))
    self.assertIn('log_temperature', state.params)

  def test_overrides(self):
    config = parse(f'--config={ROOT}/configs/default.py',
                   '--config.inner.l2reg=0.01', '--config.data.idx_dir=/d',
                   '--config.data.outer_batch_size=64',
                   '--config.inner.solver=lbfgs')
    self.assertEqual(config.inner.l2reg, 0.01)
    self.assertEqual(config.data.idx_dir, '/d')
    self.assertEqual(config.data.outer_batch_size, 64)
    self.assertEqual(config.inner.solver, 'lbfgs')

  def test_typo_is_rejected(self):
    with self.assertRaisesRegex(AttributeError, 'Did you mean "learning_rate"'):
      parse(f'--config={ROOT}/configs/default.py',
            '--config.optimizer.learnig_rate=0.1')


if __name__ == '__main__':
  absltest.main()
