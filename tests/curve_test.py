"""Tests of benchmarks/curve.py's arguments and table rows (not its runs)."""

from absl import app
from absl.testing import absltest

from tests import scripts

curve = scripts.load_benchmark('curve')


class CurveTest(absltest.TestCase):

  def test_runs_are_label_equals_workdir(self):
    self.assertEqual(curve.parse_runs(['random=w/a', 'pool=w/b=c']),
                     {'random': 'w/a', 'pool': 'w/b=c'})
    for bad in (['w/a'], ['=w/a'], ['random='], []):
      with self.assertRaises(app.UsageError):
        curve.parse_runs(bad)

  def test_validation_reads_one_methods_rows_and_never_the_test_split(self):
    def row(method, labels, validation, test):
      return {'evaluator': 'convnet', 'method': method, 'labels': labels,
              'validation_accuracy': validation,
              'validation_accuracy_std': 0.01, 'test_accuracy': test}
    result = {'net_table': [row('distilled', 'soft', 0.8, 0.1),
                            row('distilled', 'hard', 0.7, 0.2),
                            row('random_real', 'hard', 0.6, 0.3)]}
    self.assertEqual(curve.validation(result, 'distilled'),
                     {('convnet', 'soft'): (0.8, 0.01),
                      ('convnet', 'hard'): (0.7, 0.01)})
    self.assertEqual(curve.validation(result, 'random_real'),
                     {('convnet', 'hard'): (0.6, 0.01)})


if __name__ == '__main__':
  absltest.main()
