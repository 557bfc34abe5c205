"""Tests of the outer step: hypergradient, data parallelism, minibatches."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from configs import test as test_config
from distillation import augment
from distillation import errors
from distillation import input_pipeline
from distillation import outer
from distillation import parallel


def _config(**inner):
  config = test_config.get_config()
  config.inner.update(inner)
  return config


def _pmap_on(num_devices, fn):
  """`fn` pmapped like `parallel.pmap`, on the first `num_devices` only."""
  return jax.pmap(fn, axis_name=parallel.AXIS, in_axes=(None, 0),
                  out_axes=None, devices=jax.local_devices()[:num_devices])


def _train_split(config, size=None):
  train, _ = input_pipeline.load_train_and_validation(config.data)
  return train if size is None else train.take(np.arange(size))


def _float64_problem(config, train):
  """A Distiller, its initial params and one shard of `train`, in float64
  (call under jax.enable_x64)."""
  distiller = outer.Distiller(config)
  params = jax.tree.map(lambda x: x.astype(jnp.float64),
                        distiller.init_state(jax.random.PRNGKey(0)).params)
  shard = jax.tree.map(
      lambda x: x.astype(np.float64) if x.dtype == np.float32 else x,
      parallel.shard_split(train, 1))
  return distiller, params, shard


def _check_directional_derivatives(grads, params, outer_loss, directions):
  """<grads, v> against central differences of outer_loss along random v."""
  np.testing.assert_equal(set(grads), set(params))
  rng = np.random.default_rng(0)
  eps = 1e-6
  for _ in range(directions):
    v = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
    shifted = lambda sign, v=v: jax.tree.map(
        lambda x, d: x + sign * eps * d, params, v)
    numeric = (outer_loss(shifted(1)) - outer_loss(shifted(-1))) / (2 * eps)
    analytic = sum(jnp.sum(g * d) for g, d in zip(
        jax.tree.leaves(grads), jax.tree.leaves(v)))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


class OuterTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('images', False, 'lbfgs', 'cg'),
      ('learned_labels_and_l2reg', True, 'lbfgs', 'cg'),
      ('newton', True, 'newton', 'direct'))
  def test_hypergradient_matches_finite_differences(self, learned, solver,
                                                    implicit_solve):
    config = _config(solver=solver, tol=1e-10, maxiter=5000,
                     implicit_solve=implicit_solve, implicit_tol=1e-12)
    config.distill.learn_labels = config.distill.learn_l2reg = learned
    train = _train_split(config, 301)  # Uneven, to exercise the padding.
    with jax.enable_x64(True):
      distiller, params, shard = _float64_problem(config, train)
      grads, metrics, _ = _pmap_on(
          1, distiller.loss_and_hypergradient)(params, shard)

      # An independent outer loss: plain mean cross-entropy, no pmap.
      def outer_loss(params):
        w = distiller.fit_inner(params).params
        logits = train.images.astype(np.float64) @ w['params']['Dense_0'][
            'kernel']
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, train.labels[:, None], -1)[:, 0])

      outer_loss = jax.jit(outer_loss)  # One compile for its seven calls.
      np.testing.assert_allclose(metrics['loss'], outer_loss(params),
                                 rtol=1e-10)
      _check_directional_derivatives(grads, params, outer_loss, 3)

  def test_learned_parameters_start_at_the_seed_setting(self):
    config = _config()
    config.distill.learn_labels = config.distill.learn_l2reg = True
    distiller = outer.Distiller(config)
    params = distiller.init_state(jax.random.PRNGKey(0)).params
    l2reg, _, targets = distiller.hyperparams(params)
    np.testing.assert_allclose(l2reg, config.inner.l2reg, rtol=1e-6)
    np.testing.assert_array_equal(np.argmax(targets, -1), distiller.labels)
    self.assertGreater(float(targets.max(-1).min()), 0.9)

  @parameterized.parameters('noise', 'real')
  def test_a_second_initial_state_compiles_nothing(self, image_init):
    # Eager random draws compile one small program each (tens of ms apiece),
    # and a jit of a bound method made anew per call compiles every time.
    config = _config()
    config.distill.image_init = image_init
    train = _train_split(config)
    distiller = outer.Distiller(config)
    first = distiller.init_state(jax.random.PRNGKey(0), train)
    with jax.log_compiles(), self.assertNoLogs('jax', level='WARNING'):
      second = distiller.init_state(jax.random.PRNGKey(1), train)
    self.assertFalse(np.array_equal(first.params['images'],
                                    second.params['images']))

  def test_real_init_takes_training_images_of_each_class(self):
    config = _config()
    config.distill.images_per_class = 3
    config.distill.image_init = 'real'
    train = _train_split(config)
    distiller = outer.Distiller(config)
    images = np.asarray(distiller.init_state(jax.random.PRNGKey(0),
                                             train).params['images'])
    for image, label in zip(images, distiller.labels):
      matches = np.flatnonzero((train.images == image).all(axis=1))
      self.assertNotEmpty(matches)
      self.assertEqual(train.labels[matches[0]], label)
    self.assertLen({tuple(x) for x in images}, 30)

  def test_means_init_of_one_image_per_class_is_the_class_mean(self):
    config = _config()
    config.distill.image_init = 'means'
    train = _train_split(config)
    distiller = outer.Distiller(config)
    images = distiller.init_state(jax.random.PRNGKey(0), train).params[
        'images']
    for c in range(10):
      np.testing.assert_allclose(
          images[c], train.images[train.labels == c].mean(0), rtol=1e-5,
          atol=1e-6)

  @parameterized.parameters('constant', 'cosine', 'warmup_cosine')
  def test_schedules(self, schedule):
    config = _config()
    config.optimizer.name = 'sgd'
    config.optimizer.schedule = schedule
    config.optimizer.warmup_steps = 2
    optimizer = outer.make_optimizer(config.optimizer, num_steps=10)
    params = {'x': jnp.zeros(())}
    state = optimizer.init(params)
    steps = []
    for _ in range(10):
      update, state = optimizer.update({'x': jnp.ones(())}, state, params)
      steps.append(-float(update['x']))
    lr = config.optimizer.learning_rate
    if schedule == 'constant':
      np.testing.assert_allclose(steps, lr)
    else:
      self.assertLess(steps[-1], 0.1 * lr)
      self.assertAlmostEqual(max(steps), lr, places=6)

  def test_a_learned_l2reg_below_its_floor_is_projected_onto_it(self):
    # Whatever the hypergradient does, a step ends with log(l2reg) at or
    # above log(l2reg_min); far below it and with a tiny learning rate, the
    # step's own update cannot bring it back, so only the projection can.
    config = _config()
    config.distill.learn_l2reg = True
    config.distill.l2reg_min = 0.05
    config.optimizer.learning_rate = 1e-3
    distiller = outer.Distiller(config)
    state = distiller.init_state(jax.random.PRNGKey(0))
    floor = np.log(np.float32(config.distill.l2reg_min))
    state = state.replace(params={**state.params,
                                  'log_l2reg': jnp.float32(floor - 10.0)})
    step = _pmap_on(1, lambda s, b: distiller.train_steps(s, b, num_steps=1))
    state, _ = step(state, parallel.shard_split(_train_split(config, 100), 1))
    self.assertEqual(float(state.params['log_l2reg']), float(floor))
    config.distill.l2reg_min = 0.0
    with self.assertRaisesRegex(errors.UserError, 'config.distill.l2reg_min'):
      outer.Distiller(config)

  def test_eight_devices_equal_one_device(self):
    if jax.local_device_count() < 8:
      self.skipTest('needs 8 devices: run under pytest (tests/conftest.py '
                    'sets XLA_FLAGS=--xla_force_host_platform_device_count=8)')
    config = _config()
    train = _train_split(config)
    distiller = outer.Distiller(config)
    state = distiller.init_state(jax.random.PRNGKey(0))
    one = _pmap_on(1, lambda s, b: distiller.train_steps(s, b, num_steps=3))
    one_state, one_metrics = one(state, parallel.shard_split(train, 1))
    eight_state, eight_metrics = distiller.pmapped_train_steps(3)(
        distiller.init_state(jax.random.PRNGKey(0)),
        parallel.put_sharded(train))
    np.testing.assert_allclose(eight_metrics['loss'], one_metrics['loss'],
                               rtol=1e-5)
    np.testing.assert_allclose(eight_state.params['images'],
                               one_state.params['images'], rtol=1e-4,
                               atol=1e-6)
    self.assertEqual(int(eight_state.step), 3)

  def test_minibatches_are_deterministic_and_skip_padding(self):
    config = _config()
    config.data.outer_batch_size = 16
    train = _train_split(config, 101)
    distiller = outer.Distiller(config)
    shard = parallel.put_sharded(train)
    select = parallel.pmap(
        lambda rng, s: jax.lax.all_gather(
            distiller._select_batch(s, rng), parallel.AXIS))
    first = select(jax.random.PRNGKey(1), shard)
    again = select(jax.random.PRNGKey(1), shard)
    other = select(jax.random.PRNGKey(2), shard)
    self.assertEqual(first['labels'].shape, (8, 2))
    np.testing.assert_array_equal(first['images'], again['images'])
    self.assertFalse(np.array_equal(first['images'], other['images']))
    np.testing.assert_array_equal(first['mask'], 1.0)  # Never a padded row.

  @parameterized.parameters(('lbfgs', 'cg'), ('newton', 'direct'))
  def test_warm_start_gives_the_same_hypergradient(self, solver,
                                                   implicit_solve):
    """From a perturbed previous solution and from the exact one (where the
    solve stops at once); float64, so that only the method is tested."""
    config = _config(solver=solver, tol=1e-9, implicit_solve=implicit_solve,
                     implicit_tol=1e-12)
    config.distill.images_per_class = 3  # 30 images: more than needed.
    train = _train_split(config, 200)
    with jax.enable_x64(True):
      distiller, params, shard = _float64_problem(config, train)
      step = _pmap_on(1, distiller.loss_and_hypergradient)
      cold, _, solution = step(params, shard)
      warm_step = _pmap_on(1, lambda p_start, b: (
          distiller.loss_and_hypergradient(p_start[0], b, p_start[1])))
      for start in (solution, jax.tree.map(lambda x: x * 1.01, solution)):
        warm, _, _ = warm_step((params, start), shard)
        np.testing.assert_allclose(warm['images'], cold['images'], rtol=1e-6,
                                   atol=1e-10)

  @parameterized.named_parameters(
      ('images_per_class', 'distill.images_per_class', 0),
      ('l2reg', 'inner.l2reg', -1.0),
      ('optimizer', 'optimizer.name', 'adagrad?'),
      ('learning_rate', 'optimizer.learning_rate', 0.0),
      ('infinite_learning_rate', 'optimizer.learning_rate', float('inf')),
      ('infinite_l2reg', 'inner.l2reg', float('inf')),
      ('image_init', 'distill.image_init', 'zeros?'),
      ('schedule', 'optimizer.schedule', 'linear?'),
      ('dataset', 'data.dataset', 'imagenet'),
      ('features', 'model.features', 'resnet?'),
      ('loss', 'inner.loss', 'hinge'),
      ('augment', 'distill.augment', 'crop_blur'),
  )
  def test_bad_config_is_reported_by_field(self, field, value):
    config = _config()
    section, name = field.split('.')
    config[section][name] = value
    with self.assertRaisesRegex(errors.UserError, f'^config.{field}=[^\n]*$'):
      outer.Distiller(config)

  def test_only_training_steps_augment(self):
    train = parallel.shard_split(_train_split(_config(), 100), 1)
    steps, evals = [], []
    for strategy in ('none', 'crop'):
      config = _config()
      config.distill.augment = strategy
      distiller = outer.Distiller(config)
      state = distiller.init_state(jax.random.PRNGKey(0))
      steps.append(_pmap_on(1, lambda s, b, d=distiller: d.train_steps(
          s, b, num_steps=1))(state, train)[0].params['images'])
      evals.append(_pmap_on(1, distiller.eval_step)(state.params, train))
    self.assertFalse(np.array_equal(steps[0], steps[1]))
    np.testing.assert_array_equal(evals[0]['loss'], evals[1]['loss'])


if __name__ == '__main__':
  absltest.main()


def _logistic_regression(features, targets, l2reg, iterations=30):
  """argmin_W mean CE(targets, features W) + l2reg / 2 ||W||^2 by Newton's
  method in NumPy (float64), as the tests' independent inner solution."""
  k, d = features.shape
  num_classes = targets.shape[1]
  w = np.zeros((d, num_classes))
  for _ in range(iterations):
    p = scipy.special.softmax(features @ w, -1)
    grad = features.T @ (p - targets) / k + l2reg * w
    # Hessian of the cross-entropy: sum_i phi_i phi_i^T (x) (diag p_i - p_i
    # p_i^T) / k, in the (d, num_classes) ordering of W.
    curvature = (np.einsum('ic,cb->icb', p, np.eye(num_classes)) -
                 np.einsum('ic,ib->icb', p, p))
    hessian = np.einsum('ia,ie,icb->aceb', features,
                        features, curvature).reshape(
                            d * num_classes, d * num_classes) / k
    hessian += l2reg * np.eye(d * num_classes)
    w = w - np.linalg.solve(hessian, grad.reshape(-1)).reshape(w.shape)
  return w


_SOLVERS = (('gradient_descent', 'cg'), ('lbfgs', 'cg'), ('newton', 'direct'))


def _ridge_regression(features, targets, l2reg):
  """argmin_W mean ||features W - targets||^2 / 2 + l2reg / 2 ||W||^2 by
  least squares on the rows stacked with sqrt(k l2reg) I (NumPy, float64)."""
  k, d = features.shape
  stacked = np.concatenate([features, np.sqrt(k * l2reg) * np.eye(d)])
  padded = np.concatenate([targets, np.zeros((d, targets.shape[1]))])
  return np.linalg.lstsq(stacked, padded, rcond=None)[0]


def _feature_config(features, solver, implicit_solve, **inner):
  """A tiny random-feature problem with every outer parameter learned."""
  config = _config(solver=solver, implicit_solve=implicit_solve, **inner)
  config.model.features = features
  config.model.width = 4 if features == 'conv' else 8
  config.model.depth = 2 if features == 'conv' else 1
  config.distill.learn_labels = config.distill.learn_l2reg = True
  config.distill.learn_temperature = True
  return config


class FeatureOuterTest(parameterized.TestCase):
  """The outer step with random conv and mlp features."""

  @parameterized.named_parameters(
      [(f'{features}_{solver[0]}', features, solver, 'none')
       for features in ('conv', 'mlp') for solver in _SOLVERS] +
      # Augmentation acts before the solver; one solver (of the cheapest
      # compile) covers its gradient.
      [('conv_newton_augmented', 'conv', ('newton', 'direct'), 'crop_scale'),
       # The squared head (a closed form: the solver plays no part), on the
       # features of trained pool members instead of random networks.
       ('mlp_squared_pool', 'mlp', ('newton', 'direct'), 'none', 'squared',
        True)])
  def test_hypergradient_matches_finite_differences_cold_and_warm(
      self, features, solver, strategy, loss='logistic', pool=False):
    # A tight tol: the finite differences divide the solutions' errors by
    # eps.
    config = _feature_config(features, *solver, tol=1e-12, maxiter=5000,
                             implicit_tol=1e-12, loss=loss)
    if pool:
      config.model.pool_size = 2
      config.model.pool_learning_rate = 0.05
    fit_head = {'logistic': _logistic_regression,
                'squared': _ridge_regression}[loss]
    config.distill.augment = strategy
    train = _train_split(config, 101)
    with jax.enable_x64(True):
      distiller, params, shard = _float64_problem(config, train)
      # A non-trivial temperature, so its gradient is tested too.
      params['log_temperature'] = jnp.asarray(0.5, jnp.float64)
      model = distiller.inner_model
      nets = model.draw(jax.random.PRNGKey(3))
      if pool:  # Both members after 3 steps on the set.
        train_members = jax.jit(lambda members, params: model.pool.train(
            members, [0, 1], *distiller.hyperparams(params)[1:],
            jax.random.PRNGKey(4)))
        fresh = jax.jit(model.pool.init)(jax.random.PRNGKey(3))
        members = fresh
        for _ in range(3):
          members = train_members(members, params)
        np.testing.assert_array_equal(members['age'], [3, 53])
        nets = model.pool.feature_nets(members, [0, 1])
        self.assertGreater(max(np.abs(a - b).max() for a, b in zip(
            jax.tree.leaves(members['features']),
            jax.tree.leaves(fresh['features']))), 0.01)
      # This key draws scale for one net and crop for the other.
      augment_key = None if strategy == 'none' else jax.random.PRNGKey(1)
      pmapped = _pmap_on(1, lambda p_init, b: (
          distiller.loss_and_hypergradient(p_init[0], b, p_init[1], nets,
                                           augment_key)))
      step = lambda init: pmapped((params, init), shard)
      grads, metrics, solution = step(None)

      # An independent outer loss: each net's head fit in NumPy (Newton's
      # method, or least squares for the squared loss) on its features of
      # the images (net i's augmented with the
      # draw of fold_in(augment_key, i)); the mean over nets of the tempered
      # mean cross-entropy on the batch.
      shape = (-1,) + distiller.info.image_shape
      transforms = augment.parse_strategy(strategy, shape[-1], 'strategy')

      def augmented(images, i):
        if augment_key is None:
          return images
        return augment.augment(jax.random.fold_in(augment_key, i),
                               images.reshape(shape), transforms).reshape(
                                   images.shape)

      head_phi = jax.jit(lambda images: jnp.stack([
          model.feature_map(net, augmented(images, i))
          for i, net in enumerate(nets)]))
      batch_features = np.asarray(model.features(
          nets, train.images.astype(np.float64)))

      def outer_loss(params):
        l2reg, images, targets = (np.asarray(x) for x in
                                  distiller.hyperparams(params))
        total = 0.0
        for head_features, features in zip(np.asarray(head_phi(images)),
                                           batch_features):
          w = fit_head(head_features, targets, l2reg)
          logits = features @ w * np.exp(params['log_temperature'])
          total += np.mean(scipy.special.logsumexp(logits, -1) - logits[
              np.arange(len(logits)), train.labels])
        return total / len(nets)

      np.testing.assert_allclose(metrics['loss'], outer_loss(params),
                                 rtol=1e-9)
      _check_directional_derivatives(grads, params, outer_loss, 2)
      # Warm: from each net's solution, exact and perturbed; without
      # augmentation only, as a start does not touch the images (and the
      # squared loss's closed form takes no start).
      if augment_key is None and loss == 'logistic':
        for start in (solution, jax.tree.map(lambda x: x * 1.01, solution)):
          warm, _, _ = step(start)
          for name in grads:
            np.testing.assert_allclose(warm[name], grads[name], rtol=1e-6,
                                       atol=1e-10)

  @parameterized.parameters('distilled', 'real')
  def test_four_devices_equal_one_device(self, pool_data):
    if jax.local_device_count() < 4:
      self.skipTest('needs 4 devices: run under pytest (tests/conftest.py '
                    'sets XLA_FLAGS=--xla_force_host_platform_device_count=8)')
    config = _feature_config('conv', 'newton', 'direct', tol=1e-5)
    config.distill.augment = 'crop'  # Its draws too are the same everywhere.
    # From a pool, whose members train and renew identically everywhere:
    # ages 0, 1; member 0 is trained at step 0, member 1 renewed at step 1.
    config.model.nets_per_step = 1
    config.model.pool_size = 2
    config.model.pool_max_updates = 2
    config.model.pool_learning_rate = 0.05
    config.model.pool_data = pool_data  # 'real': the sharded real batch.
    train = _train_split(config, 203)
    distiller = outer.Distiller(config)
    state = distiller.init_state(jax.random.PRNGKey(0))
    steps = lambda s, b: distiller.train_steps(s, b, num_steps=2)
    one_state, one_metrics = _pmap_on(1, steps)(
        state, parallel.shard_split(train, 1))
    # Every device's copy of the state, not only the first.
    four_states, four_metrics = jax.pmap(
        steps, axis_name=parallel.AXIS, in_axes=(None, 0),
        devices=jax.local_devices()[:4])(state, parallel.shard_split(train,
                                                                     4))
    for leaf in jax.tree.leaves(four_states):
      for copy in leaf[1:]:
        np.testing.assert_array_equal(copy, leaf[0])
    four_state = jax.tree.map(lambda x: x[0], four_states)
    np.testing.assert_allclose(four_metrics['loss'][0], one_metrics['loss'],
                               rtol=1e-5)
    for name in state.params:
      np.testing.assert_allclose(four_state.params[name],
                                 one_state.params[name], rtol=1e-4, atol=1e-6)
    for pool in (one_state.pool, four_state.pool):
      np.testing.assert_array_equal(pool['age'], [1, 0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                         atol=1e-6),
                 four_state.pool, one_state.pool)
    self.assertGreater(np.abs(one_state.pool['head']['kernel'][0]).max(), 0)

  def test_steps_depend_only_on_the_state(self):
    # What makes resume bit-exact: the nets and the augmentation come from
    # fold_in(rng, step).
    config = _feature_config('mlp', 'newton', 'direct', tol=1e-5)
    config.distill.augment = 'crop'
    config.data.outer_batch_size = 32
    train = parallel.shard_split(_train_split(config, 100), 1)
    distiller = outer.Distiller(config)
    state = distiller.init_state(jax.random.PRNGKey(0))
    steps = lambda n: _pmap_on(1, lambda s, b: distiller.train_steps(
        s, b, num_steps=n))
    at_once, _ = steps(4)(state, train)
    two_steps = steps(2)  # Traced and compiled once for both halves.
    halfway, _ = two_steps(state, train)
    resumed, _ = two_steps(halfway, train)
    for name in state.params:
      np.testing.assert_array_equal(resumed.params[name],
                                    at_once.params[name])

  def test_random_features_do_not_warm_start(self):
    config = _feature_config('conv', 'lbfgs', 'cg')
    config.inner.warm_start = True
    with self.assertRaisesRegex(errors.UserError,
                                '^config.inner.warm_start=True [^\n]*$'):
      outer.Distiller(config)
