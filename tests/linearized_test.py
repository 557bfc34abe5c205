"""Tests of the linearized network inner model (inner_models/linearized.py)
against independent computations in float64: finite differences of the
network, a dense solve of the inner problem, and finite differences of the
whole outer loss."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special

from configs import test as test_config
from distillation import errors
from distillation import input_pipeline
from distillation import outer
from distillation import parallel
from distillation.inner_models import linearized


def _config(features='conv', pool=False, **model):
  config = test_config.get_config()
  config.model.features = features
  config.model.width = 4 if features == 'conv' else 8
  config.model.depth = 2 if features == 'conv' else 1
  config.model.nets_per_step = 2
  config.model.linearize = True
  config.model.activation = 'softplus'
  config.model.body_l2reg = 0.05
  config.model.update(model)
  if pool:
    config.model.pool_size = 2
    config.model.pool_max_updates = 2
    config.model.pool_learning_rate = 0.05
  config.inner.loss = 'squared'
  config.inner.tol = 1e-10
  config.inner.maxiter = 2000
  config.inner.implicit_tol = 1e-12
  config.inner.implicit_maxiter = 2000
  config.distill.images_per_class = 1
  config.distill.learn_labels = config.distill.learn_l2reg = True
  config.distill.learn_temperature = True
  return config


def _pmap_on(num_devices, fn):
  return jax.pmap(fn, axis_name=parallel.AXIS, in_axes=(None, 0),
                  out_axes=None, devices=jax.local_devices()[:num_devices])


def _train_split(config, size):
  train, _ = input_pipeline.load_train_and_validation(config.data)
  return train.take(np.arange(size))


def _to64(tree):
  return jax.tree.map(
      lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype == np.float32
      else x, tree)


def _dense_rows(model, member, images):
  """The linearized logits as an explicit linear map (NumPy): rows (k * K,
  p * K + d) on the unknowns vec(W) (row-major) then delta, from the
  explicit Jacobian J; the logit of image i, class c is row i * K + c."""
  body, kernel = member['features'], np.asarray(member['kernel'])
  flat, unravel = jax.flatten_util.ravel_pytree(body)
  phi = np.asarray(model.feature_map(body, images))
  jac = np.asarray(jax.jacfwd(lambda f: model.feature_map(unravel(f), images))(
      flat))  # (k, p, d): k distilled images only, so no jit is needed.
  k, p = phi.shape
  num_classes, d = kernel.shape[1], flat.size
  rows = np.zeros((k * num_classes, p * num_classes + d))
  for c in range(num_classes):
    rows[c::num_classes, c:p * num_classes:num_classes] = phi
    rows[c::num_classes, p * num_classes:] = np.einsum('kpd,p->kd', jac,
                                                       kernel[:, c])
  return rows, (k, p, num_classes, d), (flat, unravel)


def _penalties(model, l2reg, p, num_classes, d):
  return np.concatenate([np.full(p * num_classes, l2reg),
                         np.full(d, model.body_l2reg)])


def _dense_logistic_solution(model, member, l2reg, images, targets):
  """argmin over (W, delta) of the logistic head's inner loss by Newton's
  method on the explicit linear map (NumPy, to machine precision)."""
  rows, (k, p, num_classes, d), ravel = _dense_rows(model, member, images)
  penalty = _penalties(model, l2reg, p, num_classes, d)
  y = np.asarray(targets)
  x = np.zeros(rows.shape[1])
  for _ in range(50):
    probs = scipy.special.softmax((rows @ x).reshape(k, num_classes), -1)
    grad = rows.T @ (probs - y).reshape(-1) / k + penalty * x
    # The softmax's Hessian per image: diag(s) - s s^T.
    blocks = [np.diag(s) - np.outer(s, s) for s in probs]
    hessian = rows.T @ scipy.linalg.block_diag(*blocks) @ rows / k + np.diag(
        penalty)
    x -= np.linalg.solve(hessian, grad)
  return x[:p * num_classes].reshape(p, num_classes), x[p * num_classes:], (
      ravel)


def _dense_solution(model, member, l2reg, images, targets):
  """argmin over (W, delta) of the inner loss by least squares on the
  explicit linear map: rows [phi, J a0] against the targets, stacked
  with the square roots of the penalties."""
  rows, (k, p, num_classes, d), (flat, unravel) = _dense_rows(model, member,
                                                              images)
  penalty = np.sqrt(k) * np.diag(np.sqrt(_penalties(model, l2reg, p,
                                                    num_classes, d)))
  # mean_i ||.||^2 / 2 = ||rows x - y||^2 / (2k): scale the penalty by k.
  a = np.concatenate([rows, penalty])
  y = np.concatenate([np.asarray(targets).reshape(-1),
                      np.zeros(p * num_classes + d)])
  x = np.linalg.lstsq(a, y, rcond=None)[0]
  return x[:p * num_classes].reshape(p, num_classes), x[p * num_classes:], (
      flat, unravel)


class LinearizedTest(parameterized.TestCase):

  def test_conjugate_gradients_unrolled_or_looped_solve_the_system(self):
    with jax.enable_x64(True):
      rng = np.random.default_rng(0)
      a = rng.normal(size=(12, 12))
      a = a @ a.T + 0.1 * np.eye(12)
      b = {'u': rng.normal(size=8), 'v': rng.normal(size=(2, 2))}
      flat, unravel = jax.flatten_util.ravel_pytree(b)
      matvec = lambda x: unravel(a @ jax.flatten_util.ravel_pytree(x)[0])
      x0 = jax.tree.map(jnp.zeros_like, b)
      looped, steps, residual = jax.jit(
          lambda b: linearized.conjugate_gradients(
              matvec, b, x0, 1e-10, 100))(b)
      unrolled, unrolled_steps, _ = jax.jit(
          lambda b: linearized.conjugate_gradients(
              matvec, b, x0, 1e-10, 40, unroll=True))(b)
      expected = np.linalg.solve(a, flat)
      for x in (looped, unrolled):
        np.testing.assert_allclose(jax.flatten_util.ravel_pytree(x)[0],
                                   expected, rtol=1e-8)
      self.assertLessEqual(float(residual), 1e-10)
      # The unrolled steps after convergence do nothing and are not counted.
      self.assertEqual(int(steps), int(unrolled_steps))
      self.assertLess(int(steps), 40)
      # Stopped early: the steps taken, and the residual left, which is the
      # true one (up to rounding).
      x, few, left = linearized.conjugate_gradients(matvec, b, x0, 1e-10, 3,
                                                    unroll=True)
      self.assertEqual(int(few), 3)
      true = np.linalg.norm(flat - a @ jax.flatten_util.ravel_pytree(x)[0])
      np.testing.assert_allclose(float(left), true, rtol=1e-6)
      self.assertGreater(float(left), 1e-10)

  @parameterized.parameters(('conv', 1.), ('mlp', 1.), ('mlp', 60.))
  def test_linearization_is_the_network_and_its_derivative(self, features,
                                                           beta):
    config = _config(features, softplus_beta=beta)
    with jax.enable_x64(True):
      distiller = outer.Distiller(config)
      model = distiller.inner_model
      member = _to64(model.eval_context(jax.random.PRNGKey(0))[0])
      images = jnp.asarray(np.random.default_rng(0).normal(
          size=(5, distiller.info.num_pixels)))
      network = lambda body: np.asarray(
          model.feature_map(body, images) @ member['kernel'])
      params = {'kernel': member['kernel'][None],
                'delta': jax.tree.map(lambda b: jnp.zeros((1,) + b.shape),
                                      member['features'])}
      # At delta = 0 with W = a0: the base network's logits.
      np.testing.assert_allclose(model.logits([member], params, images)[0],
                                 network(member['features']), rtol=1e-12)
      # Along delta = v with W = 0: the network's central difference.
      rng = np.random.default_rng(1)
      v = jax.tree.map(lambda b: rng.normal(size=b.shape),
                       member['features'])
      eps = 1e-6
      shifted = lambda s: jax.tree.map(lambda b, d: b + s * eps * d,
                                       member['features'], v)
      numeric = (network(shifted(1)) - network(shifted(-1))) / (2 * eps)
      params = {'kernel': jnp.zeros_like(member['kernel'])[None],
                'delta': jax.tree.map(lambda d: d[None], v)}
      np.testing.assert_allclose(model.logits([member], params, images)[0],
                                 numeric, rtol=1e-6, atol=1e-9)

  @parameterized.parameters('conv', 'mlp')
  def test_inner_solution_matches_a_dense_solve(self, features):
    config = _config(features)
    with jax.enable_x64(True):
      distiller = outer.Distiller(config)
      model = distiller.inner_model
      member = _to64(model.eval_context(jax.random.PRNGKey(0))[0])
      rng = np.random.default_rng(0)
      images = jnp.asarray(rng.normal(size=(10, distiller.info.num_pixels)))
      targets = jnp.asarray(scipy.special.softmax(rng.normal(size=(10, 10)),
                                                  -1))
      l2reg = 0.02
      result = model.fit([member], (jnp.asarray(l2reg), images, targets))
      self.assertLessEqual(float(result.error[0]), config.inner.tol)
      kernel, delta, (_, _) = _dense_solution(model, member, l2reg, images,
                                              targets)
      np.testing.assert_allclose(result.params['kernel'][0], kernel,
                                 rtol=1e-6, atol=1e-9)
      got = jax.flatten_util.ravel_pytree(jax.tree.map(
          lambda d: d[0], result.params['delta']))[0]
      np.testing.assert_allclose(got, delta, rtol=1e-6, atol=1e-9)

  @parameterized.named_parameters(('conv', 'conv', False, 'squared'),
                                  ('mlp_pool', 'mlp', True, 'squared'),
                                  ('mlp_logistic', 'mlp', False, 'logistic'))
  def test_hypergradient_matches_finite_differences(self, features, pool,
                                                    loss):
    # Two base networks from the pool, one random ConvNet (its compile is
    # the test's cost).
    config = _config(features, pool=pool, nets_per_step=2 if pool else 1)
    config.inner.loss = loss
    if loss == 'logistic':
      config.inner.solver, config.inner.implicit_solve = 'lbfgs', 'cg'
    dense_solution = {'squared': _dense_solution,
                      'logistic': _dense_logistic_solution}[loss]
    train = _train_split(config, 61)
    with jax.enable_x64(True):
      distiller = outer.Distiller(config)
      model = distiller.inner_model
      params = _to64(distiller.init_state(jax.random.PRNGKey(0)).params)
      params['log_temperature'] = jnp.asarray(0.5, jnp.float64)
      shard = _to64(parallel.shard_split(train, 1))
      if pool:  # Members trained 1 step: base networks no longer random.
        state = _to64(model.init_state(jax.random.PRNGKey(3)))
        state = jax.jit(lambda s, p: model.update(
            s, jnp.asarray(0), jax.random.PRNGKey(4),
            distiller.hyperparams(p), None))(state, params)
        context = model.context(state, jnp.asarray(0), None)
      else:
        context = _to64(model.eval_context(jax.random.PRNGKey(3)))
      grads, metrics, _ = _pmap_on(1, lambda p, b: (
          distiller.loss_and_hypergradient(p, b, None, context)))(params,
                                                                  shard)
      self.assertLessEqual(float(metrics['inner_error']), config.inner.tol)
      real = np.asarray(train.images, np.float64)
      # Each base network's features and explicit Jacobian on the real
      # images (constants of the outer loss).
      on_real = []
      for member in context:
        flat, unravel = jax.flatten_util.ravel_pytree(member['features'])
        on_real.append((
            np.asarray(model.feature_map(member['features'], real)),
            np.asarray(jax.jit(jax.jacfwd(lambda f, u=unravel: (
                model.feature_map(u(f), real))))(flat))))

      # The outer loss from the dense inner solution.
      def outer_loss(params):
        l2reg, images, targets = (np.asarray(x) for x in
                                  distiller.hyperparams(params))
        total = 0.0
        for member, (phi, jac) in zip(context, on_real):
          kernel, delta, _ = dense_solution(
              model, member, float(l2reg), jnp.asarray(images), targets)
          logits = phi @ kernel + np.einsum('npd,d,pc->nc', jac, delta,
                                            np.asarray(member['kernel']))
          logits = logits * np.exp(float(params['log_temperature']))
          total += np.mean(scipy.special.logsumexp(logits, -1) - logits[
              np.arange(len(logits)), train.labels])
        return total / len(context)

      np.testing.assert_allclose(metrics['loss'], outer_loss(params),
                                 rtol=1e-8)
      rng = np.random.default_rng(0)
      eps = 1e-6
      for _ in range(2):
        v = jax.tree.map(lambda x: rng.normal(size=x.shape), params)
        shifted = lambda s, v=v: jax.tree.map(lambda x, d: x + s * eps * d,
                                              params, v)
        numeric = (outer_loss(shifted(1)) - outer_loss(shifted(-1))) / (
            2 * eps)
        analytic = sum(float(jnp.sum(grads[n] * v[n])) for n in params)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5)

  def test_unconverged_implicit_solves_are_counted(self):
    # One CG step on the implicit system cannot reach a residual of 1e-12
    # of its right-hand side (the body has many parameters); 200 can, at
    # float64.
    counts, hypergrads = [], []
    for maxiter, tol in ((1, 1e-12), (200, 1e-6)):
      config = _config('mlp', nets_per_step=2)
      config.inner.implicit_maxiter = maxiter
      config.inner.implicit_tol = tol
      train = _train_split(config, 40)
      with jax.enable_x64(True):
        distiller = outer.Distiller(config)
        self.assertTrue(distiller.inner_model.counts_implicit_solves)
        params = _to64(distiller.init_state(jax.random.PRNGKey(0)).params)
        shard = _to64(parallel.shard_split(train, 1))
        context = _to64(distiller.inner_model.eval_context(
            jax.random.PRNGKey(3)))
        grads, metrics, _ = _pmap_on(1, lambda p, b, c=context, d=distiller: (
            d.loss_and_hypergradient(p, b, None, c)))(params, shard)
      counts.append(bool(metrics['implicit_unconverged']))
      hypergrads.append(grads)
    self.assertEqual(counts, [True, False])
    # The truncated solve's hypergradient is another one.
    self.assertFalse(np.allclose(hypergrads[0]['images'],
                                 hypergrads[1]['images']))

  def test_four_devices_equal_one_and_resume_is_exact(self):
    if jax.local_device_count() < 4:
      self.skipTest('needs 4 devices: run under pytest (tests/conftest.py '
                    'sets XLA_FLAGS=--xla_force_host_platform_device_count=8)')
    config = _config('mlp', pool=True, nets_per_step=1)
    config.inner.tol, config.inner.maxiter = 1e-4, 50
    config.inner.implicit_tol, config.inner.implicit_maxiter = 1e-5, 50
    config.distill.augment = 'crop'  # Drawn the same on every device.
    # The whole split a step: a sampled minibatch differs with the devices.
    train = _train_split(config, 203)
    distiller = outer.Distiller(config)
    state = distiller.init_state(jax.random.PRNGKey(0))
    steps = lambda n: (lambda s, b: distiller.train_steps(s, b, num_steps=n))
    one = parallel.shard_split(train, 1)
    # Equal scans (a scan of one step compiles to other float32 rounding).
    at_once, metrics = _pmap_on(1, steps(4))(state, one)
    self.assertEqual(int(metrics['inner_unconverged'].sum()), 0)
    two_steps = _pmap_on(1, steps(2))
    halfway, _ = two_steps(state, one)
    resumed, _ = two_steps(halfway, one)
    jax.tree.map(np.testing.assert_array_equal, resumed, at_once)
    # Four devices against the same two steps on one: `halfway`.
    four_states, _ = jax.pmap(
        steps(2), axis_name=parallel.AXIS, in_axes=(None, 0),
        devices=jax.local_devices()[:4])(state, parallel.shard_split(train,
                                                                     4))
    for leaf in jax.tree.leaves(four_states):
      for copy in leaf[1:]:
        np.testing.assert_array_equal(copy, leaf[0])
    four = jax.tree.map(lambda x: x[0], four_states)
    # Sums over other shards of the batch: float32 rounding, no more.
    for name in state.params:
      np.testing.assert_allclose(four.params[name], halfway.params[name],
                                 rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(four.pool['age'], halfway.pool['age'])

  @parameterized.named_parameters(
      ('loss', dict(loss='hinge'), "^config.inner.loss='hinge' is unknown"),
      ('logistic_newton', dict(loss='logistic', solver='newton'),
       "^config.inner.solver='newton' does not fit config.inner.loss="),
      ('logistic_implicit_solve', dict(loss='logistic', implicit_solve='qr'),
       "^config.inner.implicit_solve='qr' is unknown for the linearized "
       'logistic head'),
      ('body_l2reg', dict(body_l2reg=0.0), '^config.model.body_l2reg=0.0'),
      ('activation', dict(activation='tanh'), "^config.model.activation="),
      ('softplus_beta', dict(softplus_beta=0.0),
       '^config.model.softplus_beta=0.0 must be positive'),
      ('pixels', dict(features='pixels'), '^config.model.linearize=True'),
      ('implicit_maxiter', dict(implicit_maxiter=0),
       '^config.inner.implicit_maxiter=0'))
  def test_bad_settings_name_the_field(self, fields, message):
    config = _config()
    for name, value in fields.items():
      section = config.inner if name in config.inner else config.model
      section[name] = value
    with self.assertRaisesRegex(errors.UserError, message) as raised:
      outer.Distiller(config)
    self.assertNotIn('\n', str(raised.exception))


if __name__ == '__main__':
  absltest.main()
