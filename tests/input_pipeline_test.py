"""Tests of the data sources: idx files and their digests, TFDS (mocked),
digits, splits."""

import gzip
import hashlib
import json
import os
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from configs import test as test_config
from distillation import errors
from distillation import eval_lib
from distillation import input_pipeline
from distillation import train_lib
from tests import real_data_test

_IDX_NAMES = sum(input_pipeline._IDX_FILES.values(), ())


def _data_config(**overrides):
  # Random idx files are not the originals: digests are off unless a test
  # checks them.
  config = ml_collections.ConfigDict(dict(
      dataset='digits', idx_dir=None, tfds_data_dir=None, validation_size=10,
      split_seed=0, verify_digests=False))
  config.update(overrides)
  return config


def _idx_bytes(array):
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _write(path, data):
  """Writes `data`, gzipped if `path` ends in .gz."""
  with (gzip.open if path.endswith('.gz') else open)(path, 'wb') as f:
    f.write(data)


def write_idx_dataset(directory, n_train=12, n_test=5, size=28, seed=0,
                      compress=True):
  """Writes random idx files of each split (gzipped with `compress`);
  returns their arrays."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in (('train', n_train), ('test', n_test)):
    images = rng.integers(0, 256, (n, size, size))
    labels = np.arange(n) % 10
    for name, array in zip(input_pipeline._IDX_FILES[split],
                           (images, labels)):
      _write(os.path.join(directory, name + ('.gz' if compress else '')),
             _idx_bytes(array))
    arrays[split] = (images, labels)
  return arrays


def _md5s(directory):
  """{name: MD5 of the uncompressed bytes} of the idx files in directory,
  by an independent read (gunzip by name)."""
  out = {}
  for file in os.listdir(directory):
    name = file.removesuffix('.gz')
    with (gzip.open if file.endswith('.gz') else open)(
        os.path.join(directory, file), 'rb') as f:
      out[name] = hashlib.md5(f.read()).hexdigest()
  return out


def _flip_byte(path, offset):
  """Changes the uncompressed byte at `offset` of idx file `path`."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = bytearray(f.read())
  data[offset] ^= 0xFF
  stat = os.stat(path)
  _write(path, bytes(data))
  # A later modification time, as the file system may not resolve this one
  # from the write a moment ago.
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


class IdxTest(parameterized.TestCase):

  def _write_dataset(self, **kwargs):
    directory = self.create_tempdir().full_path
    return directory, write_idx_dataset(directory, **kwargs)

  @parameterized.product(split=('train', 'test'), compress=(True, False))
  def test_reads_what_was_written(self, split, compress):
    directory, arrays = self._write_dataset(compress=compress)
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
    with self.assertRaisesRegex(
        errors.UserError,
        r'lacks train-images-idx3-ubyte \(or train-images-idx3-ubyte.gz\)'):
      input_pipeline.load_split(
          _data_config(dataset='mnist', idx_dir=empty), 'train')

  def test_plain_and_gzipped_copies_of_one_file(self):
    directory, _ = self._write_dataset()
    write_idx_dataset(directory, compress=False)
    with self.assertRaisesRegex(errors.UserError,
                                'holds both train-images-idx3-ubyte and '
                                'train-images-idx3-ubyte.gz; keep one'):
      input_pipeline.load_split(
          _data_config(dataset='mnist', idx_dir=directory), 'train')

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


class DigestTest(parameterized.TestCase):
  """Files checked against an injected table: the tiny files' own MD5s
  stand for the originals'."""

  def setUp(self):
    super().setUp()
    self.idx_dir = self.create_tempdir().full_path
    self.arrays = write_idx_dataset(self.idx_dir, compress=False)
    self.known = {'mnist': _md5s(self.idx_dir)}
    self.config = _data_config(dataset='mnist', idx_dir=self.idx_dir,
                               verify_digests=True)

  def _load(self, split='train', workdir=None):
    digests = input_pipeline.IdxDigests(workdir, known=self.known)
    data = input_pipeline.load_split(self.config, split, digests)
    return data, digests

  def test_originals_load_and_are_recorded(self):
    workdir = self.create_tempdir().full_path
    _, digests = self._load('test', workdir)
    digests.save()
    with open(os.path.join(workdir, input_pipeline.DIGESTS_NAME)) as f:
      record = json.load(f)
    self.assertEqual(
        {os.path.basename(path): entry['md5']
         for path, entry in record.items()},
        {name: self.known['mnist'][name]
         for name in input_pipeline._IDX_FILES['test']})

  def test_recorded_files_are_not_hashed_again(self):
    workdir = self.create_tempdir().full_path
    self._load('train', workdir)[1].save()
    with mock.patch.object(input_pipeline.hashlib, 'md5',
                           wraps=hashlib.md5) as md5:
      self._load('train', workdir)
      md5.assert_not_called()
      # An unrecorded split is hashed when first loaded.
      self._load('test', workdir)
      self.assertEqual(md5.call_count, 2)

  @parameterized.product(name=_IDX_NAMES, compress=(True, False))
  def test_a_changed_byte_is_one_error_line(self, name, compress):
    if compress:
      for file in os.listdir(self.idx_dir):
        path = os.path.join(self.idx_dir, file)
        with open(path, 'rb') as f:
          data = f.read()
        os.remove(path)
        _write(path + '.gz', data)
    path = os.path.join(self.idx_dir, name + ('.gz' if compress else ''))
    workdir = self.create_tempdir().full_path
    split = 'train' if name.startswith('train') else 'test'
    self._load(split, workdir)[1].save()  # Checked and recorded: good.
    _flip_byte(path, -1)  # The last pixel or label.
    wrong = _md5s(self.idx_dir)[name]
    with self.assertRaises(errors.UserError) as raised:
      self._load(split, workdir)
    message = str(raised.exception)
    self.assertLen(message.splitlines(), 1)
    self.assertStartsWith(message, f'{path} has MD5 {wrong} (uncompressed), '
                          f'not {self.known["mnist"][name]} of the original '
                          f'mnist {name}')
    self.assertIn('config.data.verify_digests=False', message)

  def test_verify_digests_false_uses_the_file_and_says_so(self):
    path = os.path.join(self.idx_dir, 'train-labels-idx1-ubyte')
    with open(path, 'rb') as f:
      data = bytearray(f.read())
    data[8] = 1  # The first label, 0: a valid label, not the original.
    _write(path, bytes(data))
    self.config.verify_digests = False
    with self.assertLogs(level='WARNING') as logs:
      train, _ = self._load('train')
    self.assertEqual(train.labels[0], 1)
    self.assertLen(logs.output, 1)
    self.assertIn(f'{path} has MD5 ', logs.output[0])
    self.assertIn('used as it is (config.data.verify_digests=False)',
                  logs.output[0])

  def test_datasets_without_a_table_entry_are_not_checked(self):
    self.config.dataset = 'fashion_mnist'
    _flip_byte(os.path.join(self.idx_dir, 'train-images-idx3-ubyte'), 20)
    train, _ = self._load('train')
    images = self.arrays['train'][0]
    self.assertEqual(train.images[0, 4] * 255, 255 - images[0, 0, 4])

  def test_eval_refuses_a_damaged_test_file(self):
    """train.py records the training files; eval.py checks the test files
    when it first loads them."""
    config = test_config.get_config()
    config.num_steps = 2
    config.data.dataset = 'mnist'
    config.data.validation_size = 20
    config.data.idx_dir = self.idx_dir
    write_idx_dataset(self.idx_dir, n_train=60, compress=False)
    workdir = self.create_tempdir().full_path
    with mock.patch.dict(input_pipeline.KNOWN_DIGESTS,
                         {'mnist': _md5s(self.idx_dir)}):
      train_lib.train_and_evaluate(config, workdir)
      with open(os.path.join(workdir, input_pipeline.DIGESTS_NAME)) as f:
        self.assertLen(json.load(f), 2)  # The training split's files.
      path = os.path.join(self.idx_dir, 't10k-images-idx3-ubyte')
      _flip_byte(path, 100)
      with self.assertRaisesRegex(errors.UserError, f'^{path} has MD5 '):
        eval_lib.evaluate(workdir)
      self.assertFalse(os.path.exists(
          os.path.join(workdir, eval_lib.RESULT_NAME)))


def find_mnist() -> str | None:
  """The directory of the real MNIST idx files (MNIST_IDX_DIR, or where
  benchmarks/get_data.sh puts them), or None."""
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache')
  for directory in (os.environ.get('MNIST_IDX_DIR', ''),
                    os.path.join(cache, 'distillation', 'mnist')):
    if directory and os.path.isdir(directory):
      return directory
  return None


class RealIdxTest(absltest.TestCase):
  """The real files, where they are here, against the known digests."""

  @absltest.skipUnless(find_mnist(), 'MNIST idx files not found: set '
                       'MNIST_IDX_DIR or run benchmarks/get_data.sh mnist')
  def test_mnist(self):
    config = _data_config(dataset='mnist', idx_dir=find_mnist(),
                          verify_digests=True)
    train = input_pipeline.load_split(config, 'train')
    test = input_pipeline.load_split(config, 'test')
    self.assertEqual((len(train), len(test)), (60000, 10000))
    # The statistics every MNIST recipe quotes.
    self.assertAlmostEqual(train.images.mean(), 0.1307, places=4)
    self.assertAlmostEqual(train.images.std(), 0.3081, places=4)
    counts = np.bincount(train.labels)
    self.assertEqual((counts[0], counts[9]), (5923, 5949))

  @absltest.skipUnless(real_data_test.find_fashion_mnist(),
                       'Fashion-MNIST idx files not found: set '
                       'FASHION_MNIST_IDX_DIR or run benchmarks/get_data.sh '
                       'fashion_mnist')
  def test_fashion_mnist(self):
    config = _data_config(dataset='fashion_mnist',
                          idx_dir=real_data_test.find_fashion_mnist(),
                          verify_digests=True)
    for split in input_pipeline.SPLITS:
      data = input_pipeline.load_split(config, split)
      self.assertEqual(np.bincount(data.labels).tolist(),
                       [len(data) // 10] * 10)


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
