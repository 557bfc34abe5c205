"""Tests that every config (and argument) loads, is valid, and can be
overridden."""

import itertools
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
DATASETS = ('digits', 'mnist', 'fashion_mnist', 'cifar10')
# Every config file, with every argument its get_config accepts.
CONFIGS = [f'configs/{name}.py' for name in (
    'default', 'test', 'mnist', 'fashion_mnist', 'cifar10')] + [
        f'configs/linear.py:{dataset},ipc={ipc}'
        for dataset, ipc in itertools.product(DATASETS, (1, 10, 50))] + [
            f'configs/conv.py:{dataset},ipc={ipc}' + size
            for dataset, ipc, size in itertools.product(
                DATASETS, (1, 10, 50), ('', ',size=paper', ',size=cpu'))
            if dataset != 'digits' or size == ',size=cpu'] + [
                'configs/conv.py:digits,ipc=1,size=cpu,pool=1',
                'configs/conv.py:fashion_mnist,ipc=10,pool=1']


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
  def test_config_is_valid(self, spec):
    config = parse(f'--config={ROOT}/{spec}')
    distiller = outer.Distiller(config)
    self.assertGreaterEqual(distiller.num_distilled, 10)
    dataset, _, ipc = spec.partition(':')[2].partition(',ipc=')
    if ipc:
      self.assertEqual(config.data.dataset, dataset)
      self.assertEqual(config.distill.images_per_class,
                       int(ipc.partition(',')[0]))

  def test_arguments_choose_the_size_and_the_tuned_schedules(self):
    paper = parse(f'--config={ROOT}/configs/conv.py:fashion_mnist,ipc=1')
    cpu = parse(f'--config={ROOT}/configs/conv.py:fashion_mnist,ipc=1,'
                'size=cpu')
    self.assertEqual((paper.model.width, paper.num_steps,
                      paper.eval.net_preset), (128, 4000, 'paper'))
    self.assertEqual((cpu.model.width, cpu.num_steps, cpu.eval.net_preset),
                     (64, 600, 'cpu'))
    # benchmarks/tune/'s choices.
    self.assertEqual(cpu.optimizer.learning_rate, 0.01)
    digits = parse(f'--config={ROOT}/configs/conv.py:digits,ipc=1,size=cpu')
    self.assertEqual((digits.optimizer.learning_rate, digits.num_steps,
                      digits.model.depth, digits.eval.net_depth),
                     (0.03, 300, 2, 2))
    # benchmarks/curve/'s, tune/head/'s and tune/steps/' choices.
    ten = parse(f'--config={ROOT}/configs/conv.py:mnist,ipc=10,size=cpu')
    self.assertEqual(ten.num_steps, 3000)
    fifty = parse(f'--config={ROOT}/configs/conv.py:mnist,ipc=50,size=cpu')
    self.assertEqual((fifty.inner.loss, cpu.inner.loss, ten.inner.loss),
                     ('squared', 'logistic', 'logistic'))
    # MNIST's own choice at 50 (tune/mnist/): the pool, 600 steps; pool=0
    # gives Fashion-MNIST's 1500 steps on random networks.
    self.assertEqual((fifty.model.pool_size, fifty.num_steps), (10, 600))
    no_pool = parse(f'--config={ROOT}/configs/conv.py:mnist,ipc=50,size=cpu,'
                    'pool=0')
    self.assertEqual((no_pool.model.pool_size, no_pool.num_steps), (0, 1500))
    fashion = parse(f'--config={ROOT}/configs/conv.py:fashion_mnist,ipc=50,'
                    'size=cpu')
    self.assertEqual((fashion.model.pool_size, fashion.num_steps), (0, 1500))
    linearized = parse(f'--config={ROOT}/configs/conv.py:mnist,ipc=50,'
                       'size=cpu,inner=linearized')
    self.assertEqual(linearized.model.pool_size, 0)
    cifar = parse(f'--config={ROOT}/configs/conv.py:cifar10,ipc=50')
    self.assertEqual((cifar.data.zca, cifar.inner.solver), (True, 'lbfgs'))
    self.assertEqual(cpu.model.pool_size, 0)  # Fresh random networks.
    pool = parse(f'--config={ROOT}/configs/conv.py:fashion_mnist,ipc=1,'
                 'size=cpu,pool=1')
    self.assertEqual((pool.model.pool_size, pool.model.pool_max_updates),
                     (10, 100))
    pool.model.pool_size = cpu.model.pool_size
    self.assertEqual(pool, cpu)  # Nothing else changes.

  @parameterized.parameters(
      ('conv.py:bad', r"'bad' is not valid; use configs/conv.py:DATASET,ipc="
       r'\.\.\.\[,size=\.\.\.\]\[,pool=\.\.\.\]\[,inner=\.\.\.\] where '
       r'DATASET is one of '
       r'digits, mnist, fashion_mnist, cifar10; ipc one of 1, 10, 50; size '
       r'one of paper \(default\), cpu; pool one of 0, 1; '
       r'inner one of head \(default\), linearized\.'),
      ('conv.py', r"dataset, ipc missing \(no argument\); use "),
      ('conv.py:mnist', r"ipc missing \('mnist'\); use "),
      ('conv.py:mnist,ipc=10,ipc=1', r"'ipc=1' repeats; use "),
      ('conv.py:digits,ipc=10', r'digits has a size=cpu setting only'),
      ('linear.py:digits,ipc=10,size=cpu', r"'size=cpu' is not valid; use "
       r'configs/linear.py:DATASET,ipc=\.\.\. where'))
  def test_a_bad_argument_is_one_line_naming_the_valid_ones(self, spec,
                                                             message):
    with self.assertRaises(flags.IllegalFlagValueError) as raised:
      parse(f'--config={ROOT}/configs/{spec}')
    # config_flags adds the traceback; the command line shows its last line
    # (cli_test).
    last = str(raised.exception).strip().splitlines()[-1]
    self.assertRegex(last, f'^ValueError: .*{message}')

  @parameterized.parameters(('fashion_mnist', 784), ('cifar10', 3072))
  def test_tfds_conv_configs_load_and_start(self, dataset, num_pixels):
    # ZCA of CIFAR-10's 3072 pixels (an eigendecomposition of that size) is
    # tested on digits in input_pipeline_test instead.
    config = parse(f'--config={ROOT}/configs/conv.py:{dataset},ipc=1,size=cpu',
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
