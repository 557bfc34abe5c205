"""Tests of the data sources: idx files, TFDS (mocked), digits, splits."""

import gzip
import os

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from distillation import errors
from distillation import input_pipeline


def _data_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      dataset='digits', idx_dir=None, tfds_data_dir=None, validation_size=10,
      split_seed=0))
  config.update(overrides)
  return config


def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_idx_dataset(directory, n_train=12, n_test=5, size=28, seed=0):
  """Writes random idx files of each split; returns their arrays."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in (('train', n_train), ('test', n_test)):
    images = rng.integers(0, 256, (n, size, size))
    labels = np.arange(n) % 10
    image_file, label_file = input_pipeline._IDX_FILES[split]
    _write_idx(os.path.join(directory, image_file), images)
    _write_idx(os.path.join(directory, label_file), labels)
    arrays[split] = (images, labels)
  return arrays


class IdxTest(parameterized.TestCase):

  def _write_dataset(self, **kwargs):
    directory = self.create_tempdir().full_path
    return directory, write_idx_dataset(directory, **kwargs)

  @parameterized.parameters('train', 'test')
  def test_reads_what_was_written(self, split):
    directory, arrays = self._write_dataset()
    data = input_pipeline.load_split(
        _data_config(dataset='fashion_mnist', idx_dir=directory), split)
    images, labels = arrays[split]
    np.testing.assert_allclose(data.images,
                               images.reshape(len(images), -1) / 255.0,
                               rtol=1e-6)
    np.testing.assert_array_equal(data.labels, labels)
    self.assertEqual(data.images.dtype, np.float32)

  def test_missing_directory_and_files(self):
    with self.assertRaisesRegex(errors.UserError,
                                'config.data.idx_dir=.* is not a directory'):
      input_pipeline.load_split(
          _data_config(dataset='mnist', idx_dir='/nonexistent'), 'train')
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(errors.UserError,
                                'lacks train-images-idx3-ubyte.gz'):
      input_pipeline.load_split(
          _data_config(dataset='mnist', idx_dir=empty), 'train')

  def test_malformed_files(self):
    directory, _ = self._write_dataset()
    path = os.path.join(directory, 'train-images-idx3-ubyte.gz')
    with gzip.open(path, 'rb') as f:
      data = f.read()
    with gzip.open(path, 'wb') as f:
      f.write(data[:-7])
    config = _data_config(dataset='mnist', idx_dir=directory)
    with self.assertRaisesRegex(errors.UserError, 'truncated or malformed'):
      input_pipeline.load_split(config, 'train')
    with gzip.open(path, 'wb') as f:
      f.write(b'\x12\x34' + data[2:])
    with self.assertRaisesRegex(errors.UserError, 'bad magic number'):
      input_pipeline.load_split(config, 'train')
    with open(path, 'wb') as f:
      f.write(b'not gzip at all')
    with self.assertRaisesRegex(errors.UserError, 'cannot read idx file'):
      input_pipeline.load_split(config, 'train')
    with open(path, 'wb') as f:  # A download cut short.
      f.write(gzip.compress(data)[:-100])
    with self.assertRaisesRegex(errors.UserError,
                                'cannot read idx file .*EOFError'):
      input_pipeline.load_split(config, 'train')

  def test_wrong_image_size(self):
    directory, _ = self._write_dataset(size=20)
    with self.assertRaisesRegex(errors.UserError, r'expected \(28, 28, 1\)'):
      input_pipeline.load_split(
          _data_config(dataset='mnist', idx_dir=directory), 'train')

  def test_idx_dir_only_for_mnist_like(self):
    with self.assertRaisesRegex(errors.UserError, 'has no idx format'):
      input_pipeline.load_split(
          _data_config(dataset='cifar10', idx_dir='some_dir'), 'train')


class SourcesTest(parameterized.TestCase):

  @parameterized.parameters(('mnist', 784), ('fashion_mnist', 784),
                            ('cifar10', 3072))
  def test_tfds(self, name, num_pixels):
    with tfds.testing.mock_data(num_examples=7):
      data = input_pipeline.load_split(_data_config(dataset=name), 'train')
    self.assertEqual(data.images.shape, (7, num_pixels))
    self.assertEqual(data.images.dtype, np.float32)
    self.assertBetween(data.images.min(), 0.0, 1.0)
    self.assertBetween(data.images.max(), 0.0, 1.0)
    self.assertTrue(np.all((data.labels >= 0) & (data.labels < 10)))

  def test_tfds_failure_is_one_clear_error(self):
    data_dir = self.create_tempdir().full_path
    with tfds.testing.mock_data(num_examples=1, policy=(
        tfds.testing.MockPolicy.USE_FILES), data_dir=data_dir):
      with self.assertRaisesRegex(errors.UserError,
                                  "TFDS could not load 'mnist'"):
        input_pipeline.load_split(_data_config(dataset='mnist'), 'train')

  def test_digits(self):
    train = input_pipeline.load_split(_data_config(), 'train')
    test = input_pipeline.load_split(_data_config(), 'test')
    self.assertEqual((len(train), len(test)), (1437, 360))
    self.assertEqual(train.images.shape[1], 64)
    self.assertEqual(train.images.max(), 1.0)
    self.assertEqual(train.images.min(), 0.0)
    all_digits = {tuple(x) for x in np.concatenate([train.images,
                                                    test.images])}
    self.assertLen(all_digits, len({tuple(x) for x in train.images}) +
                   len({tuple(x) for x in test.images}))

  def test_validation_split_is_fixed_and_disjoint(self):
    split = input_pipeline.Split(np.arange(50, dtype=np.float32)[:, None],
                                 np.arange(50) % 10)
    train, val = input_pipeline.train_validation_split(split, 10, seed=3)
    train2, val2 = input_pipeline.train_validation_split(split, 10, seed=3)
    np.testing.assert_array_equal(val.images, val2.images)
    self.assertLen(val, 10)
    self.assertLen(train, 40)
    self.assertEmpty(set(train.images[:, 0]) & set(val.images[:, 0]))
    with self.assertRaisesRegex(errors.UserError,
                                'config.data.validation_size=50'):
      input_pipeline.train_validation_split(split, 50, seed=3)

  def test_unknown_dataset(self):
    with self.assertRaisesRegex(errors.UserError,
                                "config.data.dataset='svhn' is unknown"):
      input_pipeline.load_split(_data_config(dataset='svhn'), 'train')


class PreprocessingTest(parameterized.TestCase):

  def test_off_by_default_leaves_the_pixels(self):
    train, _ = input_pipeline.load_train_and_validation(_data_config())
    self.assertBetween(train.images.min(), 0.0, 1.0)
    self.assertEqual(train.images.max(), 1.0)

  def test_normalized_training_split_has_zero_mean_unit_std(self):
    config = _data_config(normalize=True)
    train, _, test = input_pipeline.load_train_validation_test(config)
    mean, std = input_pipeline.channel_stats(train.images, (8, 8, 1))
    np.testing.assert_allclose(mean, 0, atol=1e-5)
    np.testing.assert_allclose(std, 1, rtol=1e-5)
    # The test split with the training split's statistics.
    raw_train, _ = input_pipeline.train_validation_split(
        input_pipeline.load_split(config, 'train'), 10, 0)
    raw_test = input_pipeline.load_split(config, 'test')
    raw_mean, raw_std = input_pipeline.channel_stats(raw_train.images,
                                                     (8, 8, 1))
    np.testing.assert_allclose(test.images,
                               (raw_test.images - raw_mean) / raw_std,
                               rtol=1e-5, atol=1e-5)

  def test_zca_whitens_the_training_split(self):
    # With a tiny regularizer the covariance of the whitened training
    # images is the identity on the data's span (digits' corner pixels are
    # constant, so their eigenvalues are 0 and stay so).
    config = _data_config(zca=True, zca_reg=1e-8)
    train, _ = input_pipeline.load_train_and_validation(config)
    images = train.images.astype(np.float64)
    np.testing.assert_allclose(images.mean(0), 0, atol=1e-4)
    eigenvalues = np.linalg.eigvalsh(images.T @ images / len(images))
    nonzero = eigenvalues[eigenvalues > 1e-2]
    self.assertGreater(len(nonzero), 50)
    np.testing.assert_allclose(nonzero, 1, rtol=1e-2)

  def test_bad_zca_reg(self):
    with self.assertRaisesRegex(errors.UserError, '^config.data.zca_reg=0'):
      input_pipeline.load_train_and_validation(
          _data_config(zca=True, zca_reg=0.0))


if __name__ == '__main__':
  absltest.main()
