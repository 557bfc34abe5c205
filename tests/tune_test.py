"""Tests of benchmarks/tune.py's grid and choice (not its runs)."""

from absl import app
from absl.testing import absltest

from tests import scripts

tune = scripts.load_benchmark('tune')


def _result(point, validation, test, labels='soft'):
  row = {'evaluator': 'convnet', 'method': 'distilled', 'labels': labels,
         'validation_accuracy': validation, 'test_accuracy': test}
  return {'point': point, 'net_table': [row]}


class TuneTest(absltest.TestCase):

  def test_grid_is_the_product_of_its_axes(self):
    points = tune.grid_points(['optimizer.learning_rate=0.01,0.03',
                                 'num_steps=300,600'])
    self.assertLen(points, 4)
    self.assertEqual(points[1], {'optimizer.learning_rate': '0.01',
                                 'num_steps': '600'})
    self.assertEqual(tune.point_name(points[1]),
                     'learning_rate=0.01_num_steps=600')
    with self.assertRaises(app.UsageError):
      tune.grid_points(['num_steps'])

  def test_run_name_is_the_config_with_its_argument(self):
    self.assertEqual(tune.run_name('configs/conv.py:digits,ipc=1,size=cpu'),
                     'conv_digits_ipc=1_size=cpu')
    self.assertEqual(tune.run_name('configs/default.py'), 'default')

  def test_chooses_by_validation_never_by_test(self):
    results = [_result({'a': '1'}, validation=0.70, test=0.90),
               _result({'a': '2'}, validation=0.80, test=0.60),
               _result({'a': '3'}, validation=0.75, test=0.95, labels='hard')]
    self.assertEqual(tune.choose(results, 'convnet')['point'], {'a': '2'})
    with self.assertRaises(app.UsageError):
      tune.choose(results, 'mlp')


if __name__ == '__main__':
  absltest.main()
