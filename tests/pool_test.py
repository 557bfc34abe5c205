"""Tests of the pool of trained feature networks: turns, ages, renewal."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from configs import test as test_config
from distillation import errors
from distillation import outer
from distillation import parallel


def _config(**pool):
  config = test_config.get_config()
  config.model.features = 'mlp'
  config.model.width = 4
  config.model.depth = 1
  config.model.pool_size = 3
  config.model.pool_max_updates = 4
  config.model.update(pool)
  return config


class PoolTest(parameterized.TestCase):

  def test_members_take_turns_and_are_renewed_at_their_age(self):
    distiller = outer.Distiller(_config(pool_steps=2))
    pool = distiller.inner_model.pool
    # Compiled: eagerly, each of their small operations would compile.
    members = jax.jit(pool.init)(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(members['age'], [0, 1, 2])  # 4 * i // 3.
    self.assertEqual([[int(i) for i in pool.select(jnp.asarray(s))]
                      for s in range(3)], [[0, 1], [2, 0], [1, 2]])
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(10, 64)), jnp.float32)
    targets = jax.nn.softmax(jnp.asarray(rng.normal(size=(10, 10))))
    key = jax.random.PRNGKey(1)
    trained = jax.jit(lambda m: pool.train(m, [1, 2], images, targets,
                                           key))(members)
    # Member 1 took 2 steps (age 3); member 2 reached 4 and was renewed,
    # from fold_in(key, 2); member 0 was not used.
    np.testing.assert_array_equal(trained['age'], [0, 3, 0])
    fresh = jax.jit(pool._member)(jax.random.fold_in(key, 2))
    for name in ('features', 'head', 'opt_state'):
      jax.tree.map(np.testing.assert_array_equal,
                   jax.tree.map(lambda x: x[0], trained[name]),
                   jax.tree.map(lambda x: x[0], members[name]))
      jax.tree.map(np.testing.assert_array_equal,
                   jax.tree.map(lambda x: x[2], trained[name]),
                   fresh[name])
    self.assertGreater(float(jnp.abs(trained['head']['kernel'][1]).max()), 0)
    # The trained member fits the set better than it did.
    loss = jax.jit(lambda m, i: pool._loss(jax.tree.map(lambda x: x[i], m),
                                           images, targets))
    self.assertLess(float(loss(trained, 1)), float(loss(members, 1)))

  def test_real_batch_steps_are_on_the_whole_sharded_batch(self):
    # Members trained on a batch cut into 2 padded shards (under pmap, the
    # gradients summed over devices) match members trained on its real rows
    # held whole, in float64.
    if jax.local_device_count() < 2:
      self.skipTest('needs 2 devices: run under pytest (tests/conftest.py '
                    'sets XLA_FLAGS=--xla_force_host_platform_device_count=8)')
    with jax.enable_x64(True):
      distiller = outer.Distiller(_config(pool_data='real', pool_steps=2,
                                          pool_learning_rate=0.1))
      pool = distiller.inner_model.pool
      members = jax.jit(pool.init)(jax.random.PRNGKey(0))
      members = jax.tree.map(
          lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x,
          members)
      rng = np.random.default_rng(0)
      images = rng.normal(size=(7, 64))
      targets = np.eye(10)[rng.integers(0, 10, 7)]
      key = jax.random.PRNGKey(1)
      whole = jax.jit(lambda m: pool.train(m, [0, 1], images, targets,
                                           key))(members)
      # 4 rows and 3 rows + 1 row of padding.
      shards = {'images': np.zeros((2, 4, 64)), 'targets': np.zeros((2, 4, 10)),
                'mask': np.asarray([[1., 1, 1, 1], [1, 1, 1, 0]])}
      for name, x in (('images', images), ('targets', targets)):
        shards[name][0], shards[name][1, :3] = x[:4], x[4:]
      sharded = jax.pmap(
          lambda m, b: pool.train(m, [0, 1], b['images'], b['targets'], key,
                                  mask=b['mask']),
          axis_name=parallel.AXIS, in_axes=(None, 0),
          devices=jax.local_devices()[:2])(members, shards)
      for copy in (0, 1):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(
            a[copy], b, rtol=1e-10, atol=1e-12), sharded, whole)
      self.assertGreater(float(jnp.abs(whole['head']['kernel'][1]).max()), 0)

  @parameterized.parameters(
      (dict(pool_data='test'), "^config.model.pool_data='test' is unknown"),
      (dict(nets_per_step=4), '^config.model.nets_per_step=4 exceeds'),
      (dict(pool_steps=0), '^config.model.pool_steps=0 must be'),
      (dict(pool_learning_rate=0.0), '^config.model.pool_learning_rate=0.0'),
      (dict(pool_optimizer='lion'), "^config.model.pool_optimizer='lion'"),
      (dict(features='pixels'), '^config.model.pool_size=3 needs feature'),
      (dict(pool_max_updates=-1), '^config.model.pool_max_updates=-1 must'))
  def test_bad_settings_name_the_field(self, fields, message):
    with self.assertRaisesRegex(errors.UserError, message) as raised:
      outer.Distiller(_config(**fields))
    self.assertNotIn('\n', str(raised.exception))

  def test_no_pool_without_updates(self):
    self.assertIsNone(outer.Distiller(_config(pool_max_updates=0)).inner_model.pool)
    self.assertIsNone(outer.Distiller(_config(pool_size=0)).inner_model.pool)


if __name__ == '__main__':
  absltest.main()
