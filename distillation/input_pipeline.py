"""Loads whole dataset splits into host memory as flat float32 arrays.

The outer problem reads the full training split at every step, so the data is
held in memory (and later on device) instead of streamed. Three sources share
one interface, `load_split`: TFDS, a directory of MNIST-format idx files
(gzipped or not), and scikit-learn's bundled 8x8 digits. TFDS and
scikit-learn are imported only when their source is used, so the algorithmic
core needs neither. Idx files of a dataset whose originals are known are
checked against their digests (`IdxDigests`).
"""

import dataclasses
import gzip
import hashlib
import json
import os
import zlib

from absl import logging
import ml_collections
import numpy as np

from distillation import errors


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  image_shape: tuple[int, int, int]  # (height, width, channels)
  class_names: tuple[str, ...]

  @property
  def num_pixels(self) -> int:
    return int(np.prod(self.image_shape))


_DIGIT_NAMES = tuple(str(d) for d in range(10))
DATASETS = {
    'mnist': DatasetInfo(10, (28, 28, 1), _DIGIT_NAMES),
    'fashion_mnist': DatasetInfo(10, (28, 28, 1), (
        'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
        'Shirt', 'Sneaker', 'Bag', 'Ankle boot')),
    'cifar10': DatasetInfo(10, (32, 32, 3), (
        'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
        'horse', 'ship', 'truck')),
    'digits': DatasetInfo(10, (8, 8, 1), _DIGIT_NAMES),
}
IDX_DATASETS = ('mnist', 'fashion_mnist')
SPLITS = ('train', 'test')
# The original file names, each read as is or with a `.gz` suffix.
_IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
# MD5 of each original file's uncompressed bytes, so that a file checks the
# same gzipped or not (Debian recompresses Fashion-MNIST: its .gz digests
# differ from the publisher's, its contents' do not). MD5 is enough here: it
# catches damage and substitutes, not tampering.
KNOWN_DIGESTS = {
    'mnist': {
        'train-images-idx3-ubyte': '6bbc9ace898e44ae57da46a324031adb',
        'train-labels-idx1-ubyte': 'a25bea736e30d166cdddb491f175f624',
        't10k-images-idx3-ubyte': '2646ac647ad5339dbf082846283269ea',
        't10k-labels-idx1-ubyte': '27ae3e4e09519cfbb04c329615203637',
    },
    'fashion_mnist': {
        'train-images-idx3-ubyte': 'f4a8712d7a061bf5bd6d2ca38dc4d50a',
        'train-labels-idx1-ubyte': '9018921c3c673c538a1fc5bad174d6f9',
        't10k-images-idx3-ubyte': '8181f5470baa50b63fa0f6fddb340f0a',
        't10k-labels-idx1-ubyte': '15d484375f8d13e6eb1aabb0c3f46965',
    },
}
DIGESTS_NAME = 'data_digests.json'  # In the workdir: the files checked.
_DIGITS_TEST_SIZE = 360  # ~20% of the 1797 digits, held out with a fixed seed.


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: `images` (n, num_pixels), in [0, 1] as loaded, and `labels`
  (n,)."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, index: np.ndarray) -> 'Split':
    return Split(self.images[index], self.labels[index])


class IdxDigests:
  """Checks idx files against `known` digests (dataset -> file -> MD5) when
  they are first loaded.

  With a `workdir`, the files checked (path, size, modification time, MD5)
  are kept in `<workdir>/data_digests.json` by `save`: a resume or eval.py
  then trusts an unchanged file without hashing it again, and the workdir
  records which data it was made from.
  """

  def __init__(self, workdir: str | None = None,
               known: dict[str, dict[str, str]] | None = None):
    self.known = KNOWN_DIGESTS if known is None else known
    self.path = workdir and os.path.join(workdir, DIGESTS_NAME)
    self.files = {}
    if self.path and os.path.isfile(self.path):
      try:
        with open(self.path) as f:
          self.files = json.load(f)
      except (OSError, ValueError):  # A damaged record: check again.
        logging.warning('Ignoring unreadable %s.', self.path)

  def check(self, data_config: ml_collections.ConfigDict, path: str,
            data: bytes) -> None:
    """Raises a UserError if `data`, read from `path`, is not the original
    file of its name; only logs it with config.data.verify_digests=False."""
    name = os.path.basename(path).removesuffix('.gz')
    expected = self.known.get(data_config.dataset, {}).get(name)
    if expected is None:
      return
    path = os.path.abspath(path)
    stat = os.stat(path)
    key = {'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}
    entry = self.files.get(path, {})
    if {k: entry.get(k) for k in key} == key:
      md5 = entry['md5']
    else:
      md5 = hashlib.md5(data).hexdigest()
      self.files[path] = {**key, 'md5': md5}
    if md5 == expected:
      return
    message = (f'{path} has MD5 {md5} (uncompressed), not {expected} of the '
               f'original {data_config.dataset} {name}')
    if data_config.get('verify_digests', True):
      raise errors.UserError(
          f'{message}; fetch the file again (docs/operations.md), or set '
          'config.data.verify_digests=False to use it as it is.')
    logging.warning('%s; used as it is (config.data.verify_digests=False).',
                    message)

  def save(self) -> None:
    """Writes the record, if any file was checked and the workdir exists."""
    if not (self.files and self.path and
            os.path.isdir(os.path.dirname(self.path))):
      return
    with open(self.path + '.tmp', 'w') as f:
      json.dump(self.files, f, indent=2, sort_keys=True)
    os.replace(self.path + '.tmp', self.path)


def dataset_info(data_config: ml_collections.ConfigDict) -> DatasetInfo:
  """Returns the static description of `data_config.dataset`."""
  name = data_config.dataset
  if name not in DATASETS:
    raise errors.UserError(
        f'config.data.dataset={name!r} is unknown; use one of '
        f'{", ".join(sorted(DATASETS))}.')
  if data_config.get('idx_dir') and name not in IDX_DATASETS:
    raise errors.UserError(
        f'config.data.idx_dir is set but config.data.dataset={name!r} has no '
        f'idx format; use it with {" or ".join(IDX_DATASETS)}.')
  return DATASETS[name]


def load_split(data_config: ml_collections.ConfigDict, split: str,
               digests: IdxDigests | None = None) -> Split:
  """Loads `split` ('train' or 'test') of the configured dataset; idx files
  are checked by `digests` (default: against KNOWN_DIGESTS)."""
  info = dataset_info(data_config)
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  if data_config.get('idx_dir'):
    images, labels = _load_idx(data_config, split, digests or IdxDigests())
  elif data_config.dataset == 'digits':
    images, labels = _load_digits(split)
  else:
    images, labels = _load_tfds(data_config.dataset, split,
                                data_config.get('tfds_data_dir'))
  if images.shape[1:] != info.image_shape:
    raise errors.UserError(
        f'{data_config.dataset} images have shape {images.shape[1:]}, '
        f'expected {info.image_shape}; check config.data.dataset and the data '
        'source.')
  if labels.min() < 0 or labels.max() >= info.num_classes:
    raise errors.UserError(
        f'{data_config.dataset} labels must lie in [0, {info.num_classes}); '
        f'found [{labels.min()}, {labels.max()}].')
  return Split(images.reshape(len(images), -1).astype(np.float32),
               labels.astype(np.int32))


def train_validation_split(train: Split, validation_size: int,
                           seed: int) -> tuple[Split, Split]:
  """Carves a validation split of `validation_size` examples out of `train`."""
  if not 1 <= validation_size < len(train):
    raise errors.UserError(
        f'config.data.validation_size={validation_size} must be in '
        f'[1, {len(train)}) for a training split of {len(train)} examples.')
  if seed < 0:
    raise errors.UserError(f'config.data.split_seed={seed} must be at least '
                           '0.')
  order = np.random.default_rng(seed).permutation(len(train))
  return train.take(np.sort(order[validation_size:])), train.take(
      np.sort(order[:validation_size]))


def load_train_and_validation(
    data_config: ml_collections.ConfigDict,
    digests: IdxDigests | None = None) -> tuple[Split, Split]:
  """The training and validation splits, preprocessed (`Preprocessing`)."""
  train, validation, _ = _train_validation_preprocessing(data_config, digests)
  return train, validation


def load_train_validation_test(
    data_config: ml_collections.ConfigDict,
    digests: IdxDigests | None = None) -> tuple[Split, Split, Split]:
  """As `load_train_and_validation`, and the test split preprocessed the
  same way (with statistics of the training split)."""
  train, validation, preprocess = _train_validation_preprocessing(
      data_config, digests)
  return train, validation, preprocess(
      load_split(data_config, 'test', digests))


def _train_validation_preprocessing(
    data_config: ml_collections.ConfigDict, digests: IdxDigests | None
) -> tuple[Split, Split, 'Preprocessing']:
  """The preprocessed training and validation splits, and the
  preprocessing, fit on the former."""
  train, validation = train_validation_split(
      load_split(data_config, 'train', digests), data_config.validation_size,
      data_config.split_seed)
  preprocess = Preprocessing.fit(data_config, train)
  return preprocess(train), preprocess(validation), preprocess


def channel_stats(images: np.ndarray, image_shape: tuple[int, int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of flat images (n, num_pixels)."""
  images = images.reshape((-1,) + tuple(image_shape))
  return (images.mean(axis=(0, 1, 2)).astype(np.float32),
          images.std(axis=(0, 1, 2)).astype(np.float32))


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """What the model sees instead of [0, 1] pixels, fit on the training split
  (after the validation split is carved out):

  * config.data.normalize: minus the per-channel mean, over the per-channel
    std;
  * config.data.zca: then ZCA whitening (KIP, FRePo, RCIG on CIFAR-10):
    centered, times U diag(1 / sqrt(lambda + zca_reg * mean(lambda))) U^T,
    with (lambda, U) the eigenpairs of the pixels' covariance.
  Neither set: the identity (the seed's data, untouched).
  """
  shape: tuple[int, int, int]
  mean: np.ndarray | None = None  # Per channel.
  std: np.ndarray | None = None
  center: np.ndarray | None = None  # Per pixel, for ZCA.
  whitening: np.ndarray | None = None  # (num_pixels, num_pixels).

  @classmethod
  def fit(cls, data_config: ml_collections.ConfigDict,
          train: Split) -> 'Preprocessing':
    shape = dataset_info(data_config).image_shape
    identity = cls(shape)
    if data_config.get('normalize'):
      identity = cls(shape, *channel_stats(train.images, shape))
    if not data_config.get('zca'):
      return identity
    reg = data_config.zca_reg
    if not 0 < reg < np.inf:
      raise errors.UserError(f'config.data.zca_reg={reg} must be positive '
                             'and finite.')
    images = identity(train).images.astype(np.float64)
    center = images.mean(0)
    images -= center
    eigenvalues, eigenvectors = np.linalg.eigh(images.T @ images /
                                               len(images))
    eigenvalues = np.maximum(eigenvalues, 0)
    scale = 1 / np.sqrt(eigenvalues + reg * eigenvalues.mean())
    whitening = (eigenvectors * scale) @ eigenvectors.T
    return dataclasses.replace(identity, center=center.astype(np.float32),
                               whitening=whitening.astype(np.float32))

  def __call__(self, split: Split) -> Split:
    images = split.images
    if self.mean is not None:
      channels = images.reshape((len(images), -1, self.shape[-1]))
      images = ((channels - self.mean) / self.std).reshape(images.shape)
    if self.whitening is not None:
      images = (images - self.center) @ self.whitening
    return Split(images.astype(np.float32), split.labels)


def _load_tfds(name: str, split: str,
               data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    # Batches concatenated on the host: TFDS's `batch_size=-1` reads a whole
    # split as one tensor, which aborts the process on some datasets.
    batches = list(tfds.as_numpy(tfds.load(
        name, split=split, data_dir=data_dir, as_supervised=True).batch(
            10_000)))
  except Exception as e:  # TFDS raises many types; all mean "not available".
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise errors.UserError(
        f'TFDS could not load {name!r} split {split!r} ({type(e).__name__}: '
        f'{first_line}); prepare it where config.data.tfds_data_dir points, '
        'or use config.data.idx_dir for MNIST-format files.') from e
  images, labels = (np.concatenate(parts) for parts in zip(*batches))
  return images.astype(np.float32) / 255.0, labels


def read_idx_bytes(path: str) -> bytes:
  """The bytes of one idx file, uncompressed if its name ends in `.gz`."""
  try:
    with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:  # EOFError: a cut-off .gz.
    raise errors.UserError(
        f'cannot read idx file {path} ({type(e).__name__}: {e}); '
        'config.data.idx_dir must hold complete idx files.') from e


def parse_idx(data: bytes, path: str) -> np.ndarray:
  """The array in idx file `data` (the MNIST format) of unsigned bytes;
  `path` names it in errors."""
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] != 0x08:
    raise errors.UserError(f'{path} is not an idx file of unsigned bytes '
                           '(bad magic number).')
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big')
                for i in range(ndim))
  if len(data) != header + int(np.prod(shape)):
    raise errors.UserError(
        f'{path} is truncated or malformed: header says shape {shape}, '
        f'file has {len(data) - header} data bytes.')
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def find_idx_file(idx_dir: str, name: str) -> str:
  """The path of idx file `name` in `idx_dir`, as is or gzipped."""
  paths = [os.path.join(idx_dir, name + suffix) for suffix in ('', '.gz')]
  found = [path for path in paths if os.path.isfile(path)]
  if not found:
    raise errors.UserError(
        f'config.data.idx_dir={idx_dir!r} lacks {name} (or {name}.gz).')
  if len(found) > 1:
    # Either could be stale; reading one silently would hide which.
    raise errors.UserError(
        f'config.data.idx_dir={idx_dir!r} holds both {name} and {name}.gz; '
        'keep one.')
  return found[0]


def _load_idx(data_config: ml_collections.ConfigDict, split: str,
              digests: IdxDigests) -> tuple[np.ndarray, np.ndarray]:
  idx_dir = data_config.idx_dir
  if not os.path.isdir(idx_dir):
    raise errors.UserError(
        f'config.data.idx_dir={idx_dir!r} is not a directory; point it at the '
        f'folder holding {", ".join(_IDX_FILES["train"] + _IDX_FILES["test"])}.'
    )
  arrays = []
  for name in _IDX_FILES[split]:
    path = find_idx_file(idx_dir, name)
    data = read_idx_bytes(path)
    # Before parsing: a damaged header is then reported as damage.
    digests.check(data_config, path, data)
    arrays.append(parse_idx(data, path))
  images, labels = arrays
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise errors.UserError(
        f'{idx_dir}: {split} images {images.shape} and labels {labels.shape} '
        'do not match; expected (n, height, width) and (n,).')
  return images[..., None].astype(np.float32) / 255.0, labels


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  order = np.random.default_rng(0).permutation(len(digits.target))
  index = order[_DIGITS_TEST_SIZE:] if split == 'train' else order[
      :_DIGITS_TEST_SIZE]
  index = np.sort(index)
  images = digits.images[index][..., None].astype(np.float32) / 16.0
  return images, digits.target[index]
