"""Tests of benchmarks/device.py: its --quick run, as a user would start it,
and its table of skipped parts."""

import json
import os
import subprocess
import sys

from absl.testing import absltest

from tests import scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
device = scripts.load_benchmark('device')


class DeviceTest(absltest.TestCase):

  def test_quick_run_writes_every_part(self):
    out = self.create_tempdir().full_path
    # One device, as a lent GPU has; the suite's other XLA flags and its
    # compilation cache (tests/conftest.py) stay.
    xla_flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
                 if not f.startswith('--xla_force_host_platform')]
    env = dict(os.environ, XLA_FLAGS=' '.join(
        xla_flags + ['--xla_force_host_platform_device_count=1']))
    # The accelerators' path of the networks evaluator, here on CPU.
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'benchmarks', 'device.py'),
         '--quick', f'--out={out}', '--net_path=vmapped'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    self.assertEqual(process.returncode, 0, process.stderr[-3000:])
    with open(os.path.join(out, 'device.json')) as f:
      result = json.load(f)
    self.assertEqual([r['config'] for r in result['outer_steps']],
                     [quick for _, quick in device.OUTER if quick])
    for row in result['outer_steps']:
      self.assertGreater(row['ms_per_step'], 0)
      self.assertGreaterEqual(row['first_call_s'], row['compile_s'])
    self.assertEqual([(r['images_per_class'], r['path'])
                      for r in result['evaluator']],
                     [(10, 'vmapped'), (50, 'vmapped')])
    self.assertGreater(result['evaluator'][0]['network_steps_per_s'], 0)
    self.assertLen(result['full_row']['per_seed'], 2)
    self.assertEqual(result['full_row']['images'], 500)
    with open(os.path.join(out, 'device.md')) as f:
      table = f.read()
    self.assertIn('| configs/conv.py:digits,ipc=50,size=cpu | 50 | lbfgs |',
                  table)
    self.assertIn('Whole row: `convnet`', table)
    self.assertIn('`--quick`', table)

  def test_parts_past_the_budget_are_marked_skipped(self):
    result = {'device': 'gpu: test', 'devices': 1, 'machine': 'x', 'jax': '0',
              'commit': 'c', 'compilation_cache': None, 'xla_flags': '',
              'seconds': 9.0, 'quick': False,
              'outer_steps': [{'config': 'configs/fashion_mnist.py',
                               'skipped': 'budget'}],
              'evaluator': [{'images_per_class': 50, 'skipped': 'budget'}],
              'full_row': {'images_per_class': 50, 'skipped': 'budget',
                           'estimate_s': None, 'left_s': -3.0}}
    table = device.to_markdown(result)
    self.assertIn('| configs/fashion_mnist.py | skipped (budget) |', table)
    self.assertIn('| 50 | skipped (budget) |', table)
    self.assertIn('Whole row at 50 images per class: skipped (estimate - s, '
                  '0 s of the budget left).', table)
    self.assertNotIn('--quick', table)


if __name__ == '__main__':
  absltest.main()
