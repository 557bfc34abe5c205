"""Tests of training networks from scratch: learning, and device count."""

from absl.testing import absltest
import jax
import ml_collections
import numpy as np

from distillation import input_pipeline
from distillation import net_train

_DIGITS = ml_collections.ConfigDict({'dataset': 'digits'})


def _recipe(**changes):
  fields = dict(name='test', model='convnet', width=8, depth=2,
                norm='instance', epochs=10, full_data_epochs=1,
                batch_size=128, learning_rate=0.01, momentum=0.9,
                weight_decay=5e-4, seeds=2, augment=('crop', 'scale'))
  return net_train.Recipe(**{**fields, **changes})


class NetTrainTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    train = input_pipeline.load_split(_DIGITS, 'train')
    cls.train = train.take(np.arange(300))
    cls.test = input_pipeline.load_split(_DIGITS, 'test')
    images = cls.train.images.reshape(-1, 8, 8, 1)
    cls.mean, cls.std = images.mean((0, 1, 2)), images.std((0, 1, 2))

  def _accuracy(self, recipe, num_devices=None, **kwargs):
    trainer = net_train.NetTrainer(recipe, (8, 8, 1), 10, self.mean,
                                   self.std, num_devices=num_devices)
    targets = np.eye(10, dtype=np.float32)[self.train.labels]
    nets = trainer.train(self.train.images[None], targets[None], **kwargs)
    return trainer.accuracy(nets, self.test.images, self.test.labels)

  def test_trained_networks_beat_chance_widely(self):
    calls = []
    accuracy = self._accuracy(_recipe(epochs=30, learning_rate=0.05),
                              progress=lambda *a: calls.append(a))
    self.assertEqual(accuracy.shape, (2,))
    self.assertGreater(accuracy.min(), 0.6)  # Chance: 0.1.
    self.assertEqual(calls[-1], (90, 90))  # 30 epochs of 3 batches.
    mlp = self._accuracy(_recipe(model='mlp', width=32, depth=1, seeds=1,
                                 learning_rate=0.05,
                                 augment=()))
    self.assertGreater(mlp[0], 0.6)

  def test_result_does_not_depend_on_the_device_count(self):
    # Three seeds on two devices: one network is padding.
    recipe = _recipe(model='mlp', width=16, depth=1, epochs=10, seeds=3,
                     learning_rate=0.1)
    one = self._accuracy(recipe, num_devices=1)
    two = self._accuracy(recipe, num_devices=2)
    # Identical programs per network; a little slack for how XLA schedules.
    np.testing.assert_allclose(one, two, atol=0.01)
    self.assertEqual(one.shape, (3,))
    self.assertGreater(one.min(), 0.3)
    self.assertLen(set(one), 3)  # The seeds differ.

  def test_accuracy_matches_the_networks_predictions(self):
    recipe = _recipe(model='mlp', width=16, depth=1, epochs=2, seeds=2,
                     augment=())
    trainer = net_train.NetTrainer(recipe, (8, 8, 1), 10, self.mean,
                                   self.std, num_devices=1)
    targets = np.eye(10, dtype=np.float32)[self.train.labels]
    nets = trainer.train(self.train.images[None], targets[None])
    # 700 examples: two calls of 500, the second one padded.
    images = np.concatenate([self.test.images] * 2)[:700]
    labels = np.concatenate([self.test.labels] * 2)[:700]
    model = net_train.make_model(recipe, 10)
    normalized = (images.reshape(-1, 8, 8, 1) - self.mean) / self.std
    expected = []
    for seed in range(2):
      params = jax.tree.map(lambda x, s=seed: x[0, s], nets['params'])
      logits = model.apply(params, normalized)
      expected.append(np.mean(np.argmax(logits, -1) == labels))
    # Other batch shapes may round differently: allow two flipped ties.
    np.testing.assert_allclose(trainer.accuracy(nets, images, labels),
                               expected, atol=2 / 700)


if __name__ == '__main__':
  absltest.main()
